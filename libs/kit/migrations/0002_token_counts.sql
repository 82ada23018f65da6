-- Usage projections: token totals per endpoint x model and per tenant x model.
CREATE TABLE token_counts (
    endpoint       text   NOT NULL,
    model          text   NOT NULL,
    input_tokens   bigint NOT NULL DEFAULT 0,
    output_tokens  bigint NOT NULL DEFAULT 0,
    calls          bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (endpoint, model)
);
CREATE TABLE tenant_token_counts (
    tenant         text   NOT NULL,
    model          text   NOT NULL,
    input_tokens   bigint NOT NULL DEFAULT 0,
    output_tokens  bigint NOT NULL DEFAULT 0,
    calls          bigint NOT NULL DEFAULT 0,
    errors         bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, model)
);
