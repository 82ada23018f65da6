-- Usage projections: a minute time series, daily totals, and cost from the registry's prices.
CREATE TABLE usage_minutes (
    minute           timestamptz NOT NULL,
    tenant           text   NOT NULL,
    endpoint         text   NOT NULL,
    model            text   NOT NULL,
    input_tokens     bigint NOT NULL DEFAULT 0,
    output_tokens    bigint NOT NULL DEFAULT 0,
    calls            bigint NOT NULL DEFAULT 0,
    errors           bigint NOT NULL DEFAULT 0,
    estimated_calls  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (minute, tenant, endpoint, model)
);
CREATE INDEX usage_minutes_model ON usage_minutes (model, minute);

CREATE TABLE usage_days (
    day              date   NOT NULL,
    tenant           text   NOT NULL,
    endpoint         text   NOT NULL,
    model            text   NOT NULL,
    input_tokens     bigint NOT NULL DEFAULT 0,
    output_tokens    bigint NOT NULL DEFAULT 0,
    calls            bigint NOT NULL DEFAULT 0,
    errors           bigint NOT NULL DEFAULT 0,
    estimated_calls  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (day, tenant, endpoint, model)
);
CREATE INDEX usage_days_model ON usage_days (model, day);

-- Not a projection (a rebuild keeps it): where the minute series is shown rolled up into days, and
-- below which minutes were trimmed. Both only move forward, in whole UTC days.
CREATE TABLE time_series_rollup (
    singleton        boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    rolled_before    timestamptz NOT NULL,
    trimmed_before   timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- The cost projection's own fold of registry prices (nano-USD per 1M tokens, exact integers).
CREATE TABLE cost_models (
    model_id         text   PRIMARY KEY,
    aliases          text[] NOT NULL DEFAULT '{}',
    input_nano       bigint NOT NULL DEFAULT 0,
    output_nano      bigint NOT NULL DEFAULT 0
);
CREATE TABLE cost_overrides (
    tenant           text   NOT NULL,
    model_id         text   NOT NULL,
    input_nano       bigint,
    output_nano      bigint,
    PRIMARY KEY (tenant, model_id)
);
-- USD per UTC day x tenant x model; summed exactly (numeric), so any batching gives the same figures.
CREATE TABLE usage_cost (
    day                 date    NOT NULL,
    tenant              text    NOT NULL,
    model               text    NOT NULL,
    calls               bigint  NOT NULL DEFAULT 0,
    input_cost_usd      numeric NOT NULL DEFAULT 0,
    output_cost_usd     numeric NOT NULL DEFAULT 0,
    estimated_cost_usd  numeric NOT NULL DEFAULT 0,
    unpriced_calls      bigint  NOT NULL DEFAULT 0,
    PRIMARY KEY (day, tenant, model)
);
