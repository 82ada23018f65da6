"""Following events: the one kit every service uses to fold, project, publish and rebuild from the log.

    follow    StreamFold   a JetStream stream folded into memory: replayed, caught up to the stream's end
                           at start, then followed; read-your-writes by event id or stream sequence
    logfold   LogFold      some event types of the log folded into memory, caught up on demand
    outbox    Outbox       the one writer of some event types: decide under a lock against its fold,
                           append to the log, publish from the log past a checkpoint (event id as
                           Nats-Msg-Id), republish all when the stream lost messages; refuse an event too
                           large for one NATS message (EventTooLarge, 413), withhold a row too large all the
                           same (an EventWithheld marker in its place)
    project   advance      inside an appending transaction, move a PostgreSQL projection and its
                           checkpoint through the new events; catch_up does the same from the log
              LogFollower  the log followed by push into a Target kept elsewhere (Valkey), whose
                           checkpoint moves atomically with it by compare-and-set; one Lead at a time
    ingest    Ingest       a stream's durable consumer appended to the log, projections advanced in the
                           same transaction, acknowledged after the commit
    feed      LogFeed      the log published on the LOG stream in log order, each message with its
                           positions: where subscribers go live after catching up through replay; a row
                           too large for one NATS message goes as an EventWithheld marker in its place
    deadletter DeadLetters what a consumer cannot decode or apply, set aside on DEADLETTER (counted) so that
                           it goes on; `poisonous` tells the event's own failure from an outage
    tail      StreamTail   a stream read from a sequence on, for a reader that keeps its own position: any
                           gap or silence ends it (TailLost) and the reader starts again from where it is
    retries   follow_retries the retries asked of one consumer on DEADLETTER, handed to it in order from
                           the last one it took (subscribers, StreamFold, `Outbox.follow_retries` for its
                           LogFold)
    rebuild   rebuild_all  projections emptied and replayed from position 0 in one pass; replay_log
                           for any other rebuild; ProgressBar
    notices   LogNotices   the NOTIFY each appending transaction sends at commit: followers of the log
                           wake when it grows, and are idle otherwise
    marks     Watermark    a position that only moves forward; `await mark.reach(n)` instead of polling
    (kit.retry) Backoff, retry one way to wait and try again while a dependency is away, re-exported here

Every follower exposes where it is as a Watermark (`StreamFold.sequence`, `LogFold.position`,
`LogFollower.position`, `Ingest.position` and `Ingest.committed`), so callers and tests wait on a
position, never on a sleep.
"""

from switchyard_gateway.events.deadletter import DeadLetters, Poison, poisonous
from switchyard_gateway.events.feed import LogFeed
from switchyard_gateway.events.follow import StreamFold
from switchyard_gateway.events.logfold import LogFold
from switchyard_gateway.events.ingest import Ingest
from switchyard_gateway.events.marks import Watermark
from switchyard_gateway.events.notices import LogNotices
from switchyard_gateway.events.outbox import Outbox
from switchyard_gateway.events.project import (
    Busy, Lead, LogFollower, Projection, Target, advance, catch_up, checkpoints, lock_checkpoint, set_checkpoint,
)
from switchyard_gateway.events.rebuild import Folding, ProgressBar, rebuild, rebuild_all, replay_log
from switchyard_gateway.events.retries import follow_retries
from switchyard_gateway.events.tail import StreamTail, TailLost
from switchyard_gateway.kit.retry import TRANSIENT, Backoff, retry

__all__ = [
    "TRANSIENT", "Backoff", "Busy", "DeadLetters", "Folding", "Ingest", "Lead", "LogFeed", "LogFold", "LogFollower",
    "LogNotices", "Outbox", "Poison", "ProgressBar", "Projection", "StreamFold", "StreamTail", "TailLost", "Target",
    "Watermark", "advance", "catch_up", "checkpoints", "follow_retries", "lock_checkpoint", "poisonous", "rebuild",
    "rebuild_all",
    "replay_log", "retry", "set_checkpoint",
]
