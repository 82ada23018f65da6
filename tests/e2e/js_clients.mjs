// The JavaScript clients people point at the gateway, each used as its documentation shows, one line of JSON per
// scenario: {"name", "ok", "detail"}. Run by tests/e2e/test_js_clients.py; argv: gateway URL, tenant key, chat model
// served through an OpenAI-compatible endpoint, chat model served through an Ollama one, demo key, embedding model.
import { generateText, streamText, embedMany, tool, stepCountIs } from 'ai';
import { createOpenAI } from '@ai-sdk/openai';
import { createOpenAICompatible } from '@ai-sdk/openai-compatible';
import { createAnthropic } from '@ai-sdk/anthropic';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { Ollama } from 'ollama';
import { z } from 'zod';

const [url, key, translated, native, demoKey, embedModel] = process.argv.slice(2);
globalThis.AI_SDK_LOG_WARNINGS = false;
const openai = createOpenAI({ baseURL: `${url}/v1`, apiKey: key });
const compat = createOpenAICompatible({ name: 'switchyard', baseURL: `${url}/v1`, apiKey: key, includeUsage: true });
const anthropic = createAnthropic({ baseURL: `${url}/v1`, apiKey: key });
const stateless = { openai: { store: false } };
const sent = [];           // the Responses bodies the AI SDK's default model sent, to see its item_references
const kept = createOpenAI({ baseURL: `${url}/v1`, apiKey: key, fetch: async (address, init) => {
  if (String(address).endsWith('/responses')) sent.push(String(init?.body ?? ''));
  return fetch(address, init);
} });

async function scenario(name, body) {
  let line;
  try {
    line = { name, ok: true, detail: (await body()) ?? null };
  } catch (error) {
    line = { name, ok: false, detail: `${error?.name}: ${error?.message} ${error?.responseBody ?? ''}`.slice(0, 600) };
  }
  console.log(JSON.stringify(line));
}

function counted(usage) {
  for (const field of ['inputTokens', 'outputTokens', 'totalTokens']) {
    if (!Number.isInteger(usage?.[field])) throw new Error(`usage.${field} is ${usage?.[field]}`);
  }
  return usage;
}

const weather = tool({
  description: 'The weather in a city',
  inputSchema: z.object({ city: z.string(), unit: z.enum(['c', 'f']) }),
  execute: async ({ city }) => ({ city, celsius: 21 }),
});

for (const model of [translated, native]) {
  const models = {
    'openai.chat': [openai.chat(model), undefined],
    'openai responses': [openai(model), stateless],
    'openai responses kept': [kept(model), undefined],
    'openai-compatible': [compat(model), undefined],
    'anthropic': [anthropic(model), undefined],
  };
  for (const [label, [handle, providerOptions]] of Object.entries(models)) {
    await scenario(`${label} ${model} generateText tool round trip`, async () => {
      const result = await generateText({ model: handle, prompt: 'Weather in Oslo?', tools: { weather },
                                          stopWhen: stepCountIs(3), providerOptions });
      if (result.steps.length !== 2 || !result.steps[0].toolCalls.length || !result.text) {
        throw new Error(`steps ${result.steps.length}, text ${JSON.stringify(result.text)}`);
      }
      return counted(result.totalUsage);
    });
    await scenario(`${label} ${model} streamText tool round trip`, async () => {
      const result = streamText({ model: handle, prompt: 'Weather in Oslo?', tools: { weather },
                                  stopWhen: stepCountIs(3), providerOptions });
      for await (const part of result.fullStream) if (part.type === 'error') throw part.error;
      if ((await result.steps).length !== 2) throw new Error('not two steps');
      return counted(await result.totalUsage);
    });
  }
}

for (const streamed of [false, true]) {
  await scenario(`openai responses second turn with its default store${streamed ? ' streamed' : ''}`, async () => {
    const messages = [{ role: 'user', content: 'hi' }];
    const run = async () => {
      if (!streamed) return generateText({ model: kept(translated), messages, maxRetries: 0 });
      const result = streamText({ model: kept(translated), messages, maxRetries: 0 });
      for await (const part of result.fullStream) if (part.type === 'error') throw part.error;
      return { response: await result.response, usage: await result.usage, text: await result.text };
    };
    const first = await run();
    messages.push(...first.response.messages, { role: 'user', content: 'again' });
    sent.length = 0;
    const second = await run();
    const body = JSON.parse(sent.at(-1));
    const referred = body.input.filter((item) => item.type === 'item_reference').length;
    if (!referred || !second.text) throw new Error(`${referred} references, text ${JSON.stringify(second.text)}`);
    return { referred, usage: counted(second.usage) };
  });
}

await scenario('openai responses second turn with store: false', async () => {
  const messages = [{ role: 'user', content: 'hi' }];
  const first = await generateText({ model: openai(translated), messages, providerOptions: stateless });
  messages.push(...first.response.messages, { role: 'user', content: 'again' });
  const second = await generateText({ model: openai(translated), messages, providerOptions: stateless });
  return counted(second.usage);
});

const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: key, maxRetries: 0 });
await scenario('openai sdk chat stream with usage', async () => {
  const stream = await client.chat.completions.create({ model: translated, stream: true,
    stream_options: { include_usage: true }, messages: [{ role: 'user', content: 'hi' }] });
  let usage;
  for await (const chunk of stream) usage = chunk.usage ?? usage;
  if (!usage?.completion_tokens) throw new Error(`usage ${JSON.stringify(usage)}`);
  return usage;
});
await scenario('openai sdk responses.stream', async () => {
  const final = await client.responses.stream({ model: translated, input: 'hi' }).finalResponse();
  if (!final.output_text || !final.usage?.output_tokens) throw new Error(JSON.stringify(final).slice(0, 300));
  return final.usage;
});
await scenario('openai sdk embeddings (base64 by default)', async () => {
  const demo = new OpenAI({ baseURL: `${url}/v1`, apiKey: demoKey, maxRetries: 0 });
  const answer = await demo.embeddings.create({ model: embedModel, input: ['a', 'b'] });
  if (answer.data.length !== 2 || !answer.data[0].embedding.every(Number.isFinite)) throw new Error('vectors');
  return { dimensions: answer.data[0].embedding.length };
});
await scenario('ai sdk embedMany', async () => {
  const demo = createOpenAI({ baseURL: `${url}/v1`, apiKey: demoKey });
  const answer = await embedMany({ model: demo.embedding(embedModel), values: ['a', 'b', 'c'] });
  if (answer.embeddings.length !== 3) throw new Error('count');
  return answer.usage;
});

const claude = new Anthropic({ baseURL: url, apiKey: key, maxRetries: 0 });
await scenario('anthropic sdk messages.stream tool_use', async () => {
  const message = await claude.messages.stream({ model: native, max_tokens: 100, messages: [
    { role: 'user', content: 'Weather?' }], tools: [{ name: 'weather', input_schema: { type: 'object',
    properties: { city: { type: 'string' } }, required: ['city'] } }] }).finalMessage();
  if (message.stop_reason !== 'tool_use') throw new Error(message.stop_reason);
  return message.usage;
});
await scenario('anthropic sdk countTokens', async () => {
  const counted = await claude.messages.countTokens({ model: native, messages: [{ role: 'user', content: 'hi' }] });
  if (!counted.input_tokens) throw new Error(JSON.stringify(counted));
  return counted;
});

const ollama = new Ollama({ host: url, headers: { Authorization: `Bearer ${key}` } });
await scenario('ollama chat tool round trip', async () => {
  const tools = [{ type: 'function', function: { name: 'weather', parameters: { type: 'object',
    properties: { city: { type: 'string' } }, required: ['city'] } } }];
  const messages = [{ role: 'user', content: 'Weather?' }];
  const first = await ollama.chat({ model: translated, messages, tools });
  if (!first.message.tool_calls?.length) throw new Error('no tool call');
  messages.push(first.message, { role: 'tool', content: '21', tool_name: 'weather' });
  const second = await ollama.chat({ model: translated, messages, tools });
  if (!second.message.content || !second.eval_count) throw new Error(JSON.stringify(second).slice(0, 300));
  return { eval_count: second.eval_count };
});
