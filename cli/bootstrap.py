"""What `up` asks of the registry at start: the demo tenant with two simulated endpoints, a registry document."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import msgspec
from nats.aio.client import Client as NATS

from switchyard_gateway.contracts import messages as m
from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.codec import encode
from switchyard_gateway.kit import natsio
from switchyard_gateway.kit.retry import Backoff, retry
from switchyard_gateway.cli.say import say

DEMO_TENANT = "demo"
DEMO_CHAT_MODEL = "llama3.2"
DEMO_EMBED_MODEL = "nomic-embed-text"
_reply = msgspec.json.Decoder(m.CommandReply)


def demo_commands(ollama_url: str, openai_url: str, demo_key: str) -> list[m.Command]:
    """Two simulated endpoints (Ollama-style and OpenAI-style) serving the demo models, and the demo tenant."""
    models = (DEMO_CHAT_MODEL, DEMO_EMBED_MODEL)
    return [
        m.RegisterProvider(provider_id="ollama-local", kind="ollama", display_name="Simulated Ollama"),
        m.RegisterProvider(provider_id="openai-sim", kind="openai-compatible", display_name="Simulated vLLM"),
        m.RegisterEndpoint(endpoint_id="ollama-1", provider_id="ollama-local", base_url=ollama_url,
                           models=models, priority=10),
        m.RegisterEndpoint(endpoint_id="vllm-1", provider_id="openai-sim", base_url=openai_url,
                           models=models, priority=5),
        m.RegisterModel(model_id=DEMO_CHAT_MODEL, kind="chat", aliases=("llama3.2:latest",),
                        context_length=131072, input_price_per_1m=0.05, output_price_per_1m=0.10),
        m.RegisterModel(model_id=DEMO_EMBED_MODEL, kind="embedding", aliases=("nomic-embed-text:latest",),
                        context_length=8192, input_price_per_1m=0.01),
        m.CreateTenant(tenant_id=DEMO_TENANT, display_name="Demo tenant", all_models=True),
        m.IssueKey(tenant_id=DEMO_TENANT, role="member", name="demo key", secret=demo_key),
    ]


def config_command(doc: dict) -> m.Command:
    """A registry document (`switchyard.yaml`) as one atomic, idempotent registry command, answered with counts
    (every event of a large document would not fit one NATS message)."""
    return m.ImportConfig(config=doc, summary=True)


IMPORT_WAIT_S = 60.0        # a document is waited for this long (the registry refuses one it could not apply by then)


KEY_SETTINGS = {"admin": "SWITCHYARD_ADMIN_KEY", "member": "SWITCHYARD_DEMO_KEY"}    # the keys `up` issues


async def apply(nc: NATS, commands: list[m.Command], timeout_s: float = 30.0) -> list[m.CommandReply]:
    """Send commands to the registry in order, waiting for it to answer at all first."""
    deadline = time.monotonic() + timeout_s
    replies = []
    for command in commands:
        try:
            wait_s = IMPORT_WAIT_S if isinstance(command, m.ImportConfig) else 5.0
            raw = await retry(lambda command=command, wait_s=wait_s: natsio.request(
                                  nc, subjects.REGISTRY_COMMAND, encode(command), wait_s),
                              what=None, errors=(natsio.ServiceUnavailable,), backoff=Backoff(0.2, 0.2),
                              deadline_s=max(deadline - time.monotonic(), 0.0))
        except natsio.ServiceError as exc:
            if not (isinstance(command, m.IssueKey) and exc.body.code == "KEY_REVOKED"):
                raise
            # revoked through the API since the last start: it stays revoked, whatever keys.env still holds
            say(f"the {command.name or 'key'} was revoked and stays revoked: set a new one "
                f"({KEY_SETTINGS.get(command.role, 'SWITCHYARD_DEMO_KEY')}) to use it again")
            raw = encode(m.CommandReply())
        replies.append(_reply.decode(raw))
    return replies


def remembered_keys(path: Path, env_admin: str | None, env_demo: str | None,
                    env_jwt_secret: str | None = None) -> tuple[str, str, str, bool]:
    """The admin key, the demo key and the gateway's JWT secret (it signs sign-in's tokens): from the
    environment, else from the data dir, else new ones (saved, 0600).

    Returns (admin_key, demo_key, jwt_secret, generated_now); `generated_now` is about the keys.
    """
    saved = _read_keys(path)
    given = {"SWITCHYARD_ADMIN_KEY": env_admin, "SWITCHYARD_DEMO_KEY": env_demo, "SWITCHYARD_JWT_SECRET": env_jwt_secret}
    make = {"SWITCHYARD_ADMIN_KEY": lambda: f"sy_admin{secrets.token_hex(2)}_{secrets.token_urlsafe(24)}",
            "SWITCHYARD_DEMO_KEY": lambda: f"sy_demo{secrets.token_hex(2)}_{secrets.token_urlsafe(24)}",
            "SWITCHYARD_JWT_SECRET": lambda: secrets.token_urlsafe(48)}
    values, made = {}, set()
    for name, value in given.items():
        values[name] = value or saved.get(name)
        if not values[name]:
            values[name], _ = make[name](), made.add(name)
    if made:        # keep only what we made: a value given in the environment is never written down
        kept = {k: v for k, v in saved.items() if k not in values}          # other secrets of the data dir
        _write_keys(path, {**kept, **{k: v for k, v in values.items() if not given[k]}})
    generated = bool(made - {"SWITCHYARD_JWT_SECRET"})
    return values["SWITCHYARD_ADMIN_KEY"], values["SWITCHYARD_DEMO_KEY"], values["SWITCHYARD_JWT_SECRET"], generated


def remembered_secret(path: Path, name: str) -> str:
    """A secret of the data dir (keys.env, 0600): the one kept there, else a new one, kept."""
    saved = _read_keys(path)
    if not saved.get(name):
        saved[name] = secrets.token_urlsafe(32)
        _write_keys(path, saved)
    return saved[name]


def _read_keys(path: Path) -> dict[str, str]:
    saved: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            name, _, value = line.partition("=")
            if value:
                saved[name.strip()] = value.strip()
    return saved


def _write_keys(path: Path, values: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    path.chmod(0o600)
