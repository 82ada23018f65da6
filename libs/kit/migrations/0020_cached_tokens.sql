-- Prompt tokens an upstream served from its prompt cache (a part of input_tokens), and the cached-input
-- prices the cost projection folds (nano-USD per 1M tokens; NULL: such tokens cost the input price).
ALTER TABLE token_counts ADD COLUMN cached_tokens bigint NOT NULL DEFAULT 0;
ALTER TABLE tenant_token_counts ADD COLUMN cached_tokens bigint NOT NULL DEFAULT 0;
ALTER TABLE usage_minutes ADD COLUMN cached_tokens bigint NOT NULL DEFAULT 0;
ALTER TABLE usage_days ADD COLUMN cached_tokens bigint NOT NULL DEFAULT 0;
ALTER TABLE cost_models ADD COLUMN cached_nano bigint;
ALTER TABLE cost_overrides ADD COLUMN cached_nano bigint;
