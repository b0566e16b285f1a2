"""Standing questions: a watch's condition, its episodes (hysteresis, hold, cooldown), and watches checked by the
engine as frames arrive, from the event timeline (scripted descriptions, real SmolLM2) and from the model."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from scripted import CAT, ScriptedDescriber, frame_at, sign
from server_helpers import STREAM, Message, connect, frames_ingested, receive, receive_until, start_server, ws_url

from memory.events import EventTimeline
from memory.records import FrameRecord
from streamer.adapters.embedded import EmbeddedAdapter
from streamer.engine import Engine, EngineConfig
from streamer.engine_config import MemoryConfig
from streamer.evaluation.benchmarks import ovobench
from streamer.evaluation.benchmarks.common import BenchmarkEvent
from streamer.evaluation.benchmarks.forward import ForwardWatches
from streamer.evaluation.needles.building import build_stream
from streamer.evaluation.needles.content import Needle
from streamer.evaluation.replaying import Probe
from streamer.vision.describer import FrameDescription
from streamer.vision.detector import DetectedObject
from streamer.watches import (
    NEW_PICTURE_STEP,
    Watches,
    WatchEvent,
    WatchReading,
    WatchSpec,
    WatchState,
    parse_condition,
    read_timeline,
    word_confidence,
)


@pytest.mark.parametrize(
    ("text", "texts", "things"),
    [
        ("tell me when the sign says CLOSED", ("closed",), ()),
        ("Tell me when the sign reads open", ("open",), ()),
        ('alert me when "Gate 7" is shown', ("gate", "7"), ()),
        ("alert when a cat appears", (), ("cat",)),
        ("notify me if a red car enters", (), ("red", "car")),
    ],
)
def test_a_condition_is_text_to_read_and_things_to_see(
    text: str, texts: tuple[str, ...], things: tuple[str, ...]
) -> None:
    condition = parse_condition(text)
    assert (condition.texts, condition.things) == (texts, things)


def test_bad_watch_settings_are_refused_in_one_sentence() -> None:
    with pytest.raises(ValueError, match="needs a condition"):
        WatchSpec("  ")
    with pytest.raises(ValueError, match="0 < off <= on <= 1"):
        WatchSpec("when a cat appears", on=0.4, off=0.6)


def _run(spec: WatchSpec, p_by_second: Sequence[float], looked: Sequence[bool] = ()) -> list[WatchEvent]:
    """Feed one check a second; the reading's onset is the first second of the current run at or above `on`;
    `looked` says which checks read a fully described frame (all, when not given)."""
    state = WatchState("w", "cam", spec, parse_condition(spec.text))
    events = []
    onset = 0.0
    for second, p_yes in enumerate(p_by_second):
        if second == 0 or p_by_second[second - 1] < spec.on:
            onset = float(second)
        reading = WatchReading(p_yes, onset=onset, looked=looked[second] if looked else True)
        event = state.update(float(second), reading)
        if event is not None:
            events.append(event)
    return events


def test_an_episode_starts_once_and_ends_once() -> None:
    events = _run(WatchSpec("when a cat appears", hold_s=0.0), [0, 0, 1, 1, 0.7, 1, 0, 0])
    assert [(e.phase, e.t_detected) for e in events] == [("start", 3.0), ("end", 6.0)], "confirmed by 2 looks"
    assert events[0].event_id == events[1].event_id and events[0].t_onset == 2.0


def test_a_start_needs_its_confirming_look() -> None:
    cat = "when a cat appears"
    assert _run(WatchSpec(cat, hold_s=0.0), [0, 1, 0, 0, 1, 0]) == [], "single-look flickers start nothing"
    assert [e.t_detected for e in _run(WatchSpec(cat, hold_s=0.0, confirm=1), [0, 1, 0])] == [1.0, 2.0]
    # Checks of frames that did not look (terse descriptions) neither confirm nor cancel a pending start.
    late = _run(WatchSpec(cat, hold_s=0.0), [1, 1, 1, 1], looked=[True, False, False, True])
    assert [(e.phase, e.t_onset, e.t_detected) for e in late] == [("start", 0.0, 3.0)]
    with pytest.raises(ValueError, match="confirm"):
        WatchSpec(cat, confirm=0)


def test_hold_waits_and_a_flicker_does_not_start_an_episode() -> None:
    events = _run(WatchSpec("when a cat appears", hold_s=2.0), [1, 0, 1, 1, 1, 1, 0])
    assert [(e.phase, e.t_detected) for e in events] == [("start", 4.0), ("end", 6.0)]


def test_cooldown_keeps_a_second_episode_from_starting_at_once() -> None:
    events = _run(WatchSpec("when a cat appears", hold_s=0.0, cooldown_s=3.0, confirm=1), [1, 0, 1, 1, 1, 1, 0])
    assert [(e.phase, e.t_detected) for e in events] == [("start", 0.0), ("end", 1.0), ("start", 4.0), ("end", 6.0)]
    assert events[0].event_id != events[2].event_id


def test_the_timeline_says_what_is_showing_now() -> None:
    timeline = EventTimeline()
    timeline.observe(0, 0.0, [("scene", "street")], full=True)
    timeline.observe(1, 1.0, [("text", "Closed"), ("scene", "street sign")], full=True)
    timeline.observe(2, 2.0, [("scene", "street sign")], full=False)  # terse: says nothing about text
    closed = parse_condition("tell me when the sign says CLOSED")
    reading = read_timeline(closed, timeline.view(2.0))
    assert reading.p_yes == 1.0 and reading.onset == 1.0 and '"Closed"' in reading.text
    assert read_timeline(parse_condition("when a cat appears"), timeline.view(2.0)).p_yes == 0.0
    timeline.observe(3, 3.0, [("scene", "street")], full=True)  # looked for text and read none
    assert read_timeline(closed, timeline.view(3.0)).p_yes == 0.0


def test_a_word_is_as_sure_as_the_perceivers_that_named_it() -> None:
    cat = parse_condition("alert when a cat appears")
    # The detector and the classifier are independent; two labels of one softmax add up.
    named = {("object", "cat"): 0.9, ("scene", "Egyptian cat"): 0.4, ("scene", "tabby cat"): 0.3, ("colour", "grey"): 1}
    assert word_confidence(cat, named) == {"cat": pytest.approx(1 - 0.1 * 0.3)}
    assert word_confidence(cat, {("object", "dog"): 0.9}) == {}
    assert word_confidence(parse_condition("when the sign says CLOSED"), {("text", "Closed"): 1.0}) == {"closed": 1.0}
    state = WatchState("w", "cam", WatchSpec(cat_text := "alert when a cat appears"), parse_condition(cat_text))
    state.saw({("object", "cat"): 0.9}, looked=True)
    state.saw({("scene", "tabby cat"): 0.3}, looked=False)
    assert state.sure == {"cat": 0.9}, "a terse description cannot lower what a look saw"
    state.saw({("object", "cat"): 0.6}, looked=True)
    assert state.sure == {"cat": 0.6}, "a look replaces it"
    timeline = EventTimeline()
    timeline.observe(0, 0.0, [("object", "cat")], full=True)
    assert read_timeline(cat, timeline.view(0.0), state.sure).p_yes == 0.6
    both = parse_condition("notify me if a red car enters")
    timeline.observe(1, 1.0, [("object", "car")], full=True)
    assert read_timeline(both, timeline.view(1.0), {"car": 0.8}).p_yes == pytest.approx(0.4), "red is not showing"


def test_a_new_picture_makes_a_watch_look() -> None:
    watches = Watches()
    assert not watches.wants_look("cam", 0.0, step=1.0), "no watch: the policy decides alone"
    watches.add("cam", WatchSpec("when a cat appears", every_s=60.0))
    [state] = watches.due("cam", 0.0, clear=True)
    state.update(0.0, WatchReading(0.0))
    assert not watches.wants_look("cam", 1.0, step=NEW_PICTURE_STEP / 2), "the same shot: wait for the heartbeat"
    assert watches.wants_look("cam", 1.0, step=NEW_PICTURE_STEP), "a new picture: look now"
    assert not watches.wants_look("other", 1.0, step=1.0)


def test_watch_defaults_agree_everywhere() -> None:
    from streamer.server.config import WatchConfig
    from streamer.server.protocol import WatchFields

    spec = WatchSpec("when a cat appears")
    for fields in (WatchFields(text=spec.text), WatchConfig(id="w", text=spec.text)):
        assert WatchSpec.of(fields) == spec
    assert WatchSpec.of(WatchFields(text=spec.text, on=0.3)).off == 0.3, "a low on lowers off with it"


# --- the engine, with scripted descriptions and the real SmolLM2-135M ------------------------------------------

# CLOSED is shown twice, OPEN once between, a cat once; footage elsewhere.
SCRIPT = {
    **{t: sign("CLOSED") for t in range(10, 15)},
    **{t: sign("OPEN") for t in range(25, 29)},
    **{t: sign("CLOSED") for t in range(40, 44)},
    **{t: CAT for t in range(55, 58)},
}
SECONDS = 70


@pytest.fixture(scope="module")
def scripted_adapter(embedded_adapter: EmbeddedAdapter) -> EmbeddedAdapter:
    a = embedded_adapter
    return EmbeddedAdapter(ScriptedDescriber(SCRIPT), a.tokenizer, a.model, a.name, a.embedder)


def test_a_watch_fires_once_per_episode_within_seconds_of_onset(scripted_adapter: EmbeddedAdapter) -> None:
    engine = Engine(scripted_adapter, EngineConfig(memory=MemoryConfig(policy="fifo")))
    engine.add_stream("cam")
    heard: list[WatchEvent] = []
    stop = engine.on_watch_event(heard.append)
    closed = engine.add_watch("cam", WatchSpec("tell me when the sign says CLOSED"), "closed")
    engine.add_watch("cam", WatchSpec("alert when a cat appears", every_s=5.0))
    for second in range(SECONDS):
        engine.push_frame("cam", frame_at(second))
    stop()
    by_watch = [(e.watch_id, e.phase, e.t_onset, e.t_detected) for e in heard]
    assert [row for row in by_watch if row[0] == "closed"] == [
        ("closed", "start", 10.0, 12.0),
        ("closed", "end", 10.0, 15.0),
        ("closed", "start", 40.0, 42.0),
        ("closed", "end", 40.0, 44.0),
    ], "once per showing (after its 2 s hold), never for OPEN"
    cat = [row for row in by_watch if row[0] != "closed"]
    assert [row[1] for row in cat] == ["start", "end"] and cat[0][2] == 55.0 and cat[0][3] - 55.0 <= 5.0
    assert [number for number, _ in engine.watch_events()] == list(range(1, len(heard) + 1))
    [info] = [w for w in engine.watches("cam") if w.watch_id == "closed"]
    assert info.checks == SECONDS and not info.active, "every frame of the fifo policy is clear: checked"
    assert closed.spec.text.endswith("CLOSED")
    assert engine.remove_watch("closed") and not engine.remove_watch("closed")
    engine.remove_stream("cam")
    assert engine.watches() == []


class SteadyDescriber(ScriptedDescriber):
    """The scripted descriptions with features that change only where the description does (plus a little
    noise), so the curvature policy leaves the frames between changes fuzzy, and terse where asked."""

    def look_batch(self, frames: Sequence[np.ndarray], batched: Any = ()) -> list[FrameDescription]:
        looks = super().look_batch(frames, batched)
        steady = []
        for pixels, look in zip(frames, looks, strict=True):
            second = int(pixels[0, 0, 0])
            scripted = self.script.get(second, self.default)
            seed = zlib.crc32(repr((scripted.text, [o.name for o in scripted.objects], scripted.labels)).encode())
            base = np.random.default_rng(seed).standard_normal(16)
            features = (base + 0.01 * np.random.default_rng(second).standard_normal(16)).astype(np.float32)
            steady.append(dataclasses.replace(look, features=features / np.linalg.norm(features)))
        return steady

    def finish_batch(
        self, frames: Sequence[np.ndarray], looks: Sequence[FrameDescription], details: Any, batched: Any = ()
    ) -> list[FrameDescription]:
        """As the real describer: a terse description runs no detector and no OCR."""
        return [
            look if detail == "full" else dataclasses.replace(look, objects=[], text=[], detail="terse")
            for look, detail in zip(looks, details, strict=True)
        ]


def _curvature_run(
    adapter: EmbeddedAdapter, watch: WatchSpec | None, seconds: int
) -> tuple[list[FrameRecord], list[WatchEvent]]:
    """`seconds` frames through an engine with the default (curvature) policy and `watch`, if any: the records
    and the watch's events."""
    engine = Engine(adapter, EngineConfig())
    engine.add_stream("cam")
    heard: list[WatchEvent] = []
    engine.on_watch_event(heard.append)
    if watch is not None:
        engine.add_watch("cam", watch)
    for second in range(seconds):
        engine.push_frame("cam", frame_at(second))
    return list(engine.memory("cam").records), heard


def test_a_due_watch_makes_a_fuzzy_frame_look(scripted_adapter: EmbeddedAdapter) -> None:
    """Under the curvature policy most frames are fuzzy (described tersely: no OCR, no detector); a watch
    makes its stream look at least every `every_s` seconds, and at the frame after a first sighting."""

    steady = EmbeddedAdapter(
        SteadyDescriber(SCRIPT), scripted_adapter.tokenizer, scripted_adapter.model, "steady", scripted_adapter.embedder
    )
    plain, _ = _curvature_run(steady, None, 20)
    assert any(r.tier == "fuzzy" and r.detail == "terse" for r in plain), "no watch: fuzzy frames stay terse"
    watch = WatchSpec("tell me when the sign says CLOSED", every_s=4.0)
    records, heard = _curvature_run(steady, watch, 45)  # CLOSED at 10 and 40
    looks = [r.stream_time for r in records if r.detail == "full"]
    assert max(later - earlier for earlier, later in itertools.pairwise(looks)) <= 4.0
    assert any(r.tier == "fuzzy" and r.detail == "full" for r in records), "looks the policy did not ask for"
    starts = [e for e in heard if e.phase == "start"]
    assert [e.t_onset for e in starts] and all(e.t_onset in (10.0, 40.0) for e in starts)
    assert all(e.t_detected - e.t_onset <= 5.0 for e in starts)


class MontageDescriber(SteadyDescriber):
    """The scripted descriptions with new features every second (a cut a second, so no cut stands out to the
    curvature policy), terse where asked."""

    look_batch = ScriptedDescriber.look_batch


def test_on_a_montage_a_watch_looks_at_every_new_picture(scripted_adapter: EmbeddedAdapter) -> None:
    a = scripted_adapter
    montage = EmbeddedAdapter(MontageDescriber(SCRIPT), a.tokenizer, a.model, "montage", a.embedder)
    plain, _ = _curvature_run(montage, None, 45)
    assert sum(r.detail == "terse" for r in plain) >= 10, "the policy leaves most cuts of a montage fuzzy"
    records, heard = _curvature_run(montage, WatchSpec("tell me when the sign says CLOSED", every_s=60.0), 45)
    assert all(r.detail == "full" for r in records), "every frame is a new picture: every one is looked at"
    assert [(e.phase, e.t_onset, e.t_detected) for e in heard if e.phase == "start"] == [
        ("start", 10.0, 12.0),
        ("start", 40.0, 42.0),
    ]


def test_a_weak_detection_starts_nothing_unless_the_watch_asks_for_less(scripted_adapter: EmbeddedAdapter) -> None:
    """A cat the detector is 0.7 sure of, with no scene label to back it: below the default `on`."""
    a = scripted_adapter
    weak = FrameDescription(np.zeros(4), [], [DetectedObject("cat", 0.7, 1)], colours=["brown"])
    adapter = EmbeddedAdapter(
        ScriptedDescriber({t: weak for t in range(5, 12)}), a.tokenizer, a.model, "weak", a.embedder
    )

    def starts(spec: WatchSpec) -> list[WatchEvent]:
        engine = Engine(adapter, EngineConfig(memory=MemoryConfig(policy="fifo")))
        engine.add_stream("cam")
        heard: list[WatchEvent] = []
        engine.on_watch_event(heard.append)
        engine.add_watch("cam", spec)
        for second in range(15):
            engine.push_frame("cam", frame_at(second))
        return [e for e in heard if e.phase == "start"]

    assert starts(WatchSpec("alert when a cat appears")) == []
    [start] = starts(WatchSpec("alert when a cat appears", on=0.6))
    assert start.t_onset == 5.0 and start.p_yes == 0.7


def test_ovo_forward_active_probes_are_answered_by_watches(scripted_adapter: EmbeddedAdapter) -> None:
    """REC counts the episodes so far, SSR says whether one is open now, CRR whether one has started."""
    engine = Engine(scripted_adapter, EngineConfig(memory=MemoryConfig(policy="fifo")))
    engine.add_stream("cam")

    def event(event_id: str, task: str, question: str, t: float) -> BenchmarkEvent:
        return BenchmarkEvent(event_id, t, "yesno", question, question, "", task, ovobench.FORWARD)

    probes = [
        event("rec/0", "REC", "How many times did they show the sign CLOSED?", 5.0),
        event("rec/1", "REC", "How many times did they show the sign CLOSED?", 30.0),
        event("rec/2", "REC", "How many times did they show the sign CLOSED?", 50.0),
        event("ssr/0", "SSR", "The sign says CLOSED.", 12.0),
        event("ssr/1", "SSR", "The sign says CLOSED.", 20.0),
        event("crr/0", "CRR", "Is there a cat?", 50.0),
        event("crr/1", "CRR", "Is there a cat?", 60.0),
        event("mcq", "EPM", "What was shown first?", 60.0),
    ]
    forward = ForwardWatches(engine, "cam", probes)
    forward.start()
    assert len(engine.watches("cam")) == 3, "one watch per condition"
    answers: dict[str, str | None] = {}
    pending = sorted(probes, key=lambda e: e.t_query)
    for second in range(SECONDS):
        while pending and pending[0].t_query < second:
            e = pending.pop(0)
            given = forward.answer(Probe(e.id, e.t_query, e.prompt))
            answers[e.id] = given.text if given is not None else None
        engine.push_frame("cam", frame_at(second))
    forward.close()
    assert engine.watches("cam") == []
    assert answers == {
        "rec/0": "0", "rec/1": "1", "rec/2": "2",
        "ssr/0": "Yes", "ssr/1": "No",
        "crr/0": "No", "crr/1": "Yes",
        "mcq": None,  # not a forward task: asked as usual
    }  # fmt: skip


# --- over the websocket, on rendered footage played in real time through the server ----------------------------


@pytest.fixture(scope="module")
def closed_sign_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 s of packaged footage at 5 fps with a sign saying CLOSED from 8 s to 14 s and one saying OPEN from 20 s
    to 24 s."""
    needles = [Needle("sign", 8.0, 14.0, "CLOSED"), Needle("sign", 20.0, 24.0, "OPEN")]
    folder = tmp_path_factory.mktemp("watch-clip")
    return build_stream(folder / "closed.mp4", needles, [], duration=30.0, fps=5.0, size=(640, 360)).video


def test_a_watch_created_over_the_websocket_fires_once_on_real_footage(
    embedded_adapter: EmbeddedAdapter, closed_sign_clip: Path
) -> None:
    server = start_server(embedded_adapter, closed_sign_clip, webhook_urls=["http://127.0.0.1:"])
    http_replies: dict[str, Any] = {}
    posted: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        posted.append(await request.json())
        return web.Response(status=204)

    async def scenario() -> list[Message]:
        receiver = web.Application()
        receiver.router.add_post("/hook", hook)
        runner = web.AppRunner(receiver)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            return await talk(f"http://127.0.0.1:{port}/hook")
        finally:
            await runner.cleanup()

    async def talk(webhook: str) -> list[Message]:
        async with aiohttp.ClientSession() as http:
            base = server.url
            outside = {"stream_id": STREAM, "text": "a cat", "webhook": "http://10.0.0.1/hook"}
            async with http.post(f"{base}/watches", json=outside) as r:
                http_replies["outside"] = (r.status, await r.json())
            async with http.post(
                f"{base}/watches", json={"stream_id": STREAM, "text": "alert when a cat appears"}
            ) as r:
                http_replies["created"] = (r.status, await r.json())
            async with http.post(f"{base}/watches", json={"stream_id": "nowhere", "text": "a cat"}) as r:
                http_replies["unknown stream"] = (r.status, await r.json())
            ws = await connect(http, ws_url(server))
            create = {"type": "watch.create", "stream_id": STREAM, "watch_id": "closed", "id": "c1"}
            await ws.send_json({**create, "text": "tell me when the sign says CLOSED", "webhook": webhook})
            replies = [await receive(ws)]
            await ws.send_json({**create, "text": "again"})  # the same watch_id
            replies.append(await receive(ws))
            await ws.send_json({"type": "watch.list", "stream_id": STREAM})
            replies.append(await receive(ws))
            await ws.send_json({"type": "watch.delete", "watch_id": "nope"})
            replies.append(await receive(ws))
            replies += await receive_until(ws, lambda m: m["type"] == "watch.event" and m["phase"] == "end", 90.0)
            # Past the OPEN sign (20-24 s): nothing more may fire for CLOSED before the clip loops at 30 s.
            while frames_ingested(server) < 27:
                await asyncio.sleep(0.2)
            await ws.send_json({"type": "watch.delete", "watch_id": "closed", "id": "d1"})
            replies += await receive_until(ws, lambda m: m["type"] == "watch.deleted", 30.0)
            await ws.close()
            async with http.get(f"{base}/events?since=0") as r:
                http_replies["events"] = await r.json()
            async with http.get(f"{base}/watches") as r:
                http_replies["watches"] = await r.json()
            async with http.get(f"{base}/metrics") as r:
                http_replies["metrics"] = await r.text()
            async with http.delete(f"{base}/watches/closed") as r:
                http_replies["deleted twice"] = r.status
            return replies

    try:
        replies = asyncio.run(scenario())
    finally:
        server.stop()
    created, duplicate, listed, unknown = replies[:4]
    assert created["type"] == "watch.created" and created["reply_to"] == "c1"
    assert duplicate["type"] == "error" and duplicate["code"] == "duplicate_watch"
    assert listed["type"] == "watch.listed"
    assert sorted(w["watch_id"] for w in listed["watches"]) == sorted(
        ["closed", http_replies["created"][1]["watch_id"]]
    )
    assert unknown["type"] == "error" and unknown["code"] == "unknown_watch"
    events = [m for m in replies if m["type"] == "watch.event"]
    assert [e["phase"] for e in events] == ["start", "end"], "once per episode"
    start, end = events
    assert 8.0 <= start["t_onset"] <= 10.0 and start["t_detected"] - 8.0 <= 5.0
    assert "closed" in start["text"].lower() and start["event_id"] == end["event_id"]
    assert 14.0 <= end["t_detected"] <= 20.0
    assert replies[-1]["type"] == "watch.deleted"
    status, created_over_http = http_replies["created"]
    assert status == 201 and created_over_http["stream_id"] == STREAM and created_over_http["checks"] == 0
    status, refused = http_replies["unknown stream"]
    assert status == 404 and refused["error"]["code"] == "unknown_stream"
    logged = http_replies["events"]
    assert [(e["watch_id"], e["phase"]) for e in logged["events"]] == [("closed", "start"), ("closed", "end")]
    assert logged["last"] == logged["events"][-1]["number"]
    [cat] = http_replies["watches"]["watches"]
    assert cat["watch_id"] == created_over_http["watch_id"] and not cat["active"]
    # Checked on clear frames and at least every 5 s: fewer checks than the ~27 frames, more than 27 / 5.
    assert 5 <= cat["checks"] < 27
    assert f'streamer_watch_checks_total{{stream="{STREAM}",watch="{cat["watch_id"]}"}}' in http_replies["metrics"]
    assert http_replies["deleted twice"] == 404
    status, outside = http_replies["outside"]
    assert status == 403 and outside["error"]["code"] == "webhook_not_allowed"
    assert [(p["watch_id"], p["phase"], p["event_id"]) for p in posted] == [
        ("closed", e["phase"], e["event_id"]) for e in events
    ], "each event POSTed to the watch's webhook"


def test_a_config_file_gives_streams_their_watches() -> None:
    from streamer.server.cli import open_initial_streams
    from streamer.server.config import StreamerConfig

    watch = {"id": "visitor", "text": "tell me when a person appears", "hold_s": 1.0}
    config = StreamerConfig.model_validate({"sources": [{"id": "door", "url": "synthetic:bars", "watches": [watch]}]})
    [stream] = open_initial_streams(config)
    try:
        assert list(stream.watches) == [("visitor", WatchSpec("tell me when a person appears", hold_s=1.0), None)]
    finally:
        stream.source.close()


def test_a_configured_webhook_must_be_on_the_allow_list() -> None:
    from pydantic import ValidationError

    from streamer.server.config import StreamerConfig

    watch = {"id": "visitor", "text": "tell me when a person appears", "webhook": "http://10.0.0.5/alert"}
    source = {"id": "door", "url": "synthetic:bars", "watches": [watch]}
    with pytest.raises(ValidationError, match=r"outside server\.webhook_urls"):
        StreamerConfig.model_validate({"sources": [source]})
    allowed = StreamerConfig.model_validate({"sources": [source], "server": {"webhook_urls": ["http://10.0.0.5/"]}})
    assert allowed.sources[0].watches[0].webhook == "http://10.0.0.5/alert"


def test_a_start_waiting_out_its_hold_is_checked_on_every_frame() -> None:
    spec = WatchSpec("when a cat appears", every_s=5.0, hold_s=2.0)
    state = WatchState("w", "cam", spec, parse_condition(spec.text))
    assert state.due(0.0, clear=False)
    state.update(0.0, WatchReading(1.0, onset=0.0))
    assert state.due(1.0, clear=False), "pending: a fuzzy frame is checked too"
    state.update(1.0, WatchReading(1.0, onset=0.0))
    event = state.update(2.0, WatchReading(1.0, onset=0.0))
    assert event is not None and event.phase == "start" and event.t_onset == 0.0
    assert not state.due(3.0, clear=False), "in an episode: clear frames and heartbeats only"
