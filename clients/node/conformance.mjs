#!/usr/bin/env node
// npc-engine wire protocol v1: a conformance client written from docs/protocol.md alone.
//
//   node conformance.mjs tcp://127.0.0.1:5555 [--character bram] [--scene marta,bram] [--no-audio] [--verbose]
//   NPC_ENGINE_SERVER_KEY='<40 chars>' node conformance.mjs tcp://HOST:5555   (an engine with CURVE keys)
//
// It talks to a running engine over one ZeroMQ DEALER socket (npm `zeromq` v6) with one
// msgpack map per message (npm `@msgpack/msgpack`), exactly as a game would, and checks the
// engine's side of the contract: replies echo ids, turns stream in order with per-turn seq
// numbers, cancel and barge-in end a turn cleanly, and every bad input gets a typed error
// while the session and the server go on; a scene (several characters, one conversation) picks
// its answerer by the documented rules and names the speaker on every turn message. One line per check (`ok - ...` / `not ok - ...`,
// details on `#` lines below it), then `N passed, N failed`; exit status 1 on any failure,
// 2 on bad usage or when the whole run overran its deadline. Every wait has a timeout.

import { randomBytes } from "node:crypto";
import { encode, decode } from "@msgpack/msgpack";
import { Dealer, curveKeyPair } from "zeromq";

const PROTOCOL_VERSION = 1;
const VISEMES = new Set(["sil", "PP", "FF", "TH", "DD", "kk", "CH", "SS", "nn", "RR", "aa", "E", "ih", "oh", "ou"]);
const TURN_STATUSES = new Set(["ok", "degraded", "cancelled", "error"]);
const CUE_KINDS = new Set(["emotion", "gesture", "action"]);
// Stage marks (ms since the end of the player's turn) and the orders they must respect:
// each chain is causal, so a later stage can never be marked before an earlier one.
const STAGES = ["stt_final", "llm_first_token", "first_clause", "tts_first_chunk", "first_audio_sent", "llm_done", "total"];
const STAGE_CHAINS = [
  ["stt_final", "llm_first_token", "first_clause", "tts_first_chunk", "first_audio_sent", "total"],
  ["llm_first_token", "llm_done", "total"],
];
// A prompt that makes even a small model write more than a couple of tokens, so a cancel
// sent after the first delta reaches the engine while the turn is still streaming.
const LONG_PROMPT =
  "Tell me everything about your life, your work and this village, in as much detail as you can.";
const CANCEL_ATTEMPTS = 3;

// --------------------------------------------------------------------------- arguments

function usage(problem) {
  if (problem) console.error(`conformance.mjs: ${problem}`);
  console.error(
    "usage: node conformance.mjs ENDPOINT [--character ID] [--scene ID,ID] [--no-audio] [--reply-timeout S] " +
      "[--turn-timeout S] [--deadline S] [--server-key KEY] [--verbose]\n" +
      "  ENDPOINT       the engine's ZeroMQ endpoint, e.g. tcp://127.0.0.1:5555\n" +
      "  --character    character to talk to (default: the first one hello.ok lists)\n" +
      "  --scene        the scene's two characters, comma-separated (default: marta,bram if loaded,\n" +
      "                 else the first two hello.ok lists)\n" +
      "  --no-audio     skip the audio step even if the engine reports audio_out (scenes are text-only then)\n" +
      "  --reply-timeout  seconds to wait for a plain reply (default 15)\n" +
      "  --turn-timeout   seconds to wait for a whole NPC turn (default 120)\n" +
      "  --deadline       seconds for the whole run before it gives up (default 600)\n" +
      "  --server-key     the engine's CURVE public key (40 Z85 characters, printed by `npc-engine keys`),\n" +
      "                   for an engine started with --curve-secret-key (default: $NPC_ENGINE_SERVER_KEY)\n" +
      "  --verbose      print every message received",
  );
  process.exit(2);
}

function parseArgs(argv) {
  const opts = {
    endpoint: null, character: null, scene: null, audio: true, replyS: 15, turnS: 120, deadlineS: 600, verbose: false,
    serverKey: process.env.NPC_ENGINE_SERVER_KEY || null,
  };
  const num = (i, name) => {
    const v = Number(argv[i]);
    if (!(v > 0)) usage(`${name} needs a positive number of seconds`);
    return v;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--character") opts.character = argv[++i] ?? usage("--character needs an id");
    else if (a === "--scene") {
      const ids = (argv[++i] ?? usage("--scene needs two character ids, e.g. marta,bram")).split(",").map((x) => x.trim());
      if (ids.length !== 2 || ids.some((x) => !x) || ids[0] === ids[1]) usage("--scene needs two different character ids, e.g. marta,bram");
      opts.scene = ids;
    } else if (a === "--no-audio") opts.audio = false;
    else if (a === "--reply-timeout") opts.replyS = num(++i, a);
    else if (a === "--turn-timeout") opts.turnS = num(++i, a);
    else if (a === "--deadline") opts.deadlineS = num(++i, a);
    else if (a === "--server-key") opts.serverKey = argv[++i] ?? usage("--server-key needs the engine's public key");
    else if (a === "--verbose" || a === "-v") opts.verbose = true;
    else if (a === "--help" || a === "-h") usage();
    else if (a.startsWith("-")) usage(`unknown option ${a}`);
    else if (opts.endpoint === null) opts.endpoint = a;
    else usage(`unexpected argument ${a}`);
  }
  if (!opts.endpoint) usage("the engine endpoint is required");
  if (!/^(tcp|ipc|inproc):\/\//.test(opts.endpoint)) usage(`${opts.endpoint} is not a ZeroMQ endpoint (tcp://host:port)`);
  if (opts.serverKey !== null && opts.serverKey.trim().length !== 40) {
    usage("the server key is the engine's 40-character Z85 CURVE public key (npc-engine keys prints it)");
  }
  return opts;
}

const opts = parseArgs(process.argv.slice(2));
const REPLY_MS = opts.replyS * 1000;
const TURN_MS = opts.turnS * 1000;

// --------------------------------------------------------------------------- reporting

let passed = 0;
let failed = 0;

class Timeout extends Error {}

function show(value) {
  // `this[k]` is the value before Buffer.prototype.toJSON turned it into {type, data}.
  return JSON.stringify(value, function (k, v) {
    const raw = this[k];
    return raw instanceof Uint8Array ? `<bin ${raw.length} bytes>` : v;
  });
}

/** Run one check: `fn(expect)` records problems; a throw (a timeout, say) is one more problem. */
async function check(name, fn) {
  const problems = [];
  const expect = (cond, what) => {
    if (!cond) problems.push(typeof what === "function" ? what() : what);
    return Boolean(cond);
  };
  try {
    await fn(expect);
  } catch (err) {
    problems.push(err instanceof Timeout ? err.message : `threw: ${err?.stack ?? err}`);
  }
  if (problems.length === 0) {
    passed++;
    console.log(`ok - ${name}`);
  } else {
    failed++;
    console.log(`not ok - ${name}`);
    for (const p of problems) console.log(`#   ${p}`);
  }
  return problems.length === 0;
}

function note(text) {
  console.log(`# ${text}`);
}

function finish(code) {
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(code ?? (failed > 0 ? 1 : 0));
}

// A run must never hang, whatever the engine does.
setTimeout(() => {
  console.log(`not ok - the whole run finished within ${opts.deadlineS} s`);
  failed++;
  finish(2);
}, opts.deadlineS * 1000).unref();

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const isInt = (x) => Number.isInteger(x);
const isNum = (x) => typeof x === "number" && Number.isFinite(x);
const isStr = (x) => typeof x === "string";
const squash = (x) => String(x ?? "").replace(/\s+/g, " ").trim();
const isObj = (x) => x !== null && typeof x === "object" && !Array.isArray(x) && !(x instanceof Uint8Array);

// --------------------------------------------------------------------------- the connection

/** One DEALER socket, a reader loop and a mailbox that waits for messages by predicate. */
class Connection {
  constructor(endpoint, verbose, serverKey = opts.serverKey) {
    // CURVE (an engine with keys): the engine is known by its public key; ours is throw-away.
    const curve = serverKey ? { curveServerKey: serverKey.trim(), ...pairOf(curveKeyPair()) } : {};
    this.sock = new Dealer({ linger: 0, ...curve });
    this.sock.connect(endpoint);
    this.verbose = verbose;
    this.inbox = []; // received and not yet taken, in arrival order
    this.waiters = [];
    this.watchers = []; // called with every message as it arrives (checks that span a whole part of the run)
    this.arrivals = 0;
    this.undecodable = [];
    this.closed = false;
    this.sending = Promise.resolve(); // zeromq allows one send at a time per socket
    this.ids = 0;
    this.reader = this.read();
  }

  async read() {
    try {
      for await (const frames of this.sock) {
        // The engine sends one frame per message; be lenient about a leading delimiter.
        const payload = frames[frames.length - 1];
        let msg;
        try {
          msg = decode(payload);
        } catch (err) {
          this.undecodable.push(`${payload.length} bytes: ${err.message}`);
          continue;
        }
        if (!isObj(msg)) {
          this.undecodable.push(`not a map: ${show(msg)}`);
          continue;
        }
        Object.defineProperty(msg, "_n", { value: this.arrivals++, enumerable: false });
        if (this.verbose) console.log(`#   <- ${show(msg).slice(0, 300)}`);
        this.deliver(msg);
      }
    } catch (err) {
      if (!this.closed) console.log(`# receive loop stopped: ${err.message}`);
    }
  }

  deliver(msg) {
    for (const watch of this.watchers) watch(msg);
    const i = this.waiters.findIndex((w) => w.pred(msg));
    if (i >= 0) {
      const [w] = this.waiters.splice(i, 1);
      clearTimeout(w.timer);
      w.resolve(msg);
    } else {
      this.inbox.push(msg);
    }
  }

  /** The first message (already received or still to come) matching `pred`; it is taken out of the inbox. */
  next(pred, timeoutMs, what) {
    const i = this.inbox.findIndex(pred);
    if (i >= 0) return Promise.resolve(this.inbox.splice(i, 1)[0]);
    return new Promise((resolve, reject) => {
      const w = { pred, resolve };
      w.timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        reject(new Timeout(`no ${what} within ${timeoutMs / 1000} s`));
      }, timeoutMs);
      this.waiters.push(w);
    });
  }

  /** Messages already received that match `pred`, taken out of the inbox. */
  takeAll(pred) {
    const taken = this.inbox.filter(pred);
    this.inbox = this.inbox.filter((m) => !pred(m));
    return taken;
  }

  newId() {
    return `conf-${++this.ids}`;
  }

  sendFrames(frames) {
    const p = this.sending.then(() => this.sock.send(frames));
    this.sending = p.catch(() => {});
    return p;
  }

  send(msg) {
    if (this.verbose) console.log(`#   -> ${show(msg).slice(0, 300)}`);
    return this.sendFrames([encode({ v: PROTOCOL_VERSION, ...msg })]);
  }

  /** Send `msg` with an id (a fresh one unless given) and wait for the first reply that echoes it. */
  async request(msg, what, timeoutMs = REPLY_MS) {
    const id = msg.id ?? this.newId();
    await this.send({ ...msg, id });
    return this.next((m) => m.id === id, timeoutMs, `reply to ${what}`);
  }

  /** The next `error` with no id (the engine could not read the request's id), e.g. after garbage bytes. */
  nextAnonymousError(what) {
    return this.next((m) => m.type === "error" && m.id === undefined, REPLY_MS, `error for ${what}`);
  }

  close() {
    this.closed = true;
    for (const w of this.waiters) clearTimeout(w.timer);
    this.sock.close();
  }
}

function pairOf({ publicKey, secretKey }) {
  return { curvePublicKey: publicKey, curveSecretKey: secretKey };
}

// --------------------------------------------------------------------------- turn helpers

/**
 * Wait for the turn that answers request `rid` on session `sid`: its first message must be
 * turn.start echoing `rid`. Returns { tid, start } or throws with what arrived instead.
 */
async function awaitTurnStart(conn, sid, rid, expect, finishedTurns) {
  const first = await conn.next(
    (m) =>
      (m.session === sid && isInt(m.turn) && !finishedTurns.has(m.turn)) || (m.type === "error" && m.id === rid),
    TURN_MS,
    `turn.start for request ${rid}`,
  );
  if (first.type === "error") throw new Error(`the text request got an error instead of a turn: ${show(first)}`);
  expect(first.type === "turn.start", () => `the turn's first message is ${first.type}, not turn.start: ${show(first)}`);
  expect(first.id === rid, () => `turn.start echoes id ${show(first.id)}, not the request's ${rid}`);
  expect(first.seq === 0, () => `turn.start has seq ${show(first.seq)}, not 0`);
  return { tid: first.turn, start: first };
}

/** Read messages of turn `tid` until its turn.end (inclusive). `onMessage` may act mid-stream. */
async function readTurn(conn, sid, tid, start, onMessage) {
  const msgs = [start];
  for (;;) {
    const m = await conn.next((x) => x.session === sid && x.turn === tid, TURN_MS, `turn.end of turn ${tid}`);
    msgs.push(m);
    if (onMessage) await onMessage(m, msgs);
    if (m.type === "turn.end") return msgs;
  }
}

/** Structural checks every turn must pass, whatever its status. */
function checkTurnShape(msgs, sid, expect, { audio, character }) {
  const tid = msgs[0].turn;
  let lastSeq = -1;
  msgs.forEach((m, i) => {
    expect(m.v === PROTOCOL_VERSION, () => `message ${i} (${m.type}) has v=${show(m.v)}`);
    expect(m.session === sid && m.turn === tid, () => `message ${i} (${m.type}) lacks session/turn: ${show(m)}`);
    // Every message of a turn names who speaks (the session's character; in a scene, the speaker),
    // except `story` messages, whose `character` is the one the story effect concerns.
    if (character !== undefined && m.type !== "story") {
      expect(m.character === character, () => `message ${i} (${m.type}) of turn ${tid} has character ${show(m.character)}, not ${character}`);
    }
    if (expect(isInt(m.seq), () => `message ${i} (${m.type}) has no integer seq`)) {
      expect(m.seq === lastSeq + 1, () => `seq goes ${lastSeq} -> ${m.seq} at message ${i} (${m.type}); expected ${lastSeq + 1}`);
      lastSeq = m.seq;
    }
  });
  const ends = msgs.filter((m) => m.type === "turn.end");
  expect(ends.length === 1 && msgs[msgs.length - 1].type === "turn.end", "turn.end must come once, last");
  expect(msgs.filter((m) => m.type === "turn.start").length === 1, "turn.start must come exactly once");
  const end = msgs[msgs.length - 1];
  expect(TURN_STATUSES.has(end.status), () => `turn.end status ${show(end.status)} is not one of ${[...TURN_STATUSES]}`);
  expect(typeof end.interrupted === "boolean", "turn.end.interrupted must be a boolean");
  expect(isStr(end.text), "turn.end.text must be a string");
  expect(isInt(end.tokens) && end.tokens >= 0, "turn.end.tokens must be a non-negative integer");
  expect(isNum(end.audio_seconds) && end.audio_seconds >= 0, "turn.end.audio_seconds must be a non-negative number");
  if (end.degraded !== undefined) {
    expect(
      Array.isArray(end.degraded) && end.degraded.every((d) => isObj(d) && isStr(d.stage) && isStr(d.reason)),
      () => `turn.end.degraded must be a list of {stage, reason}: ${show(end.degraded)}`,
    );
  }
  checkTimings(end.timings, expect);
  // turn.end.text is what the player got: the reply.text deltas (text-only) or the chunks' text (audio).
  // A turn whose voice failed (degraded stage "tts") also counts text it could only show.
  const ttsDegraded = ttsFailed(end);
  const got = ttsDegraded ? end.text : audio
    ? msgs.filter((m) => m.type === "reply.audio").map((m) => String(m.text).trim()).filter(Boolean).join(" ")
    : msgs.filter((m) => m.type === "reply.text").map((m) => m.delta).join("");
  expect(squash(end.text) === squash(got), () => `turn.end.text ${show(end.text)} is not what was sent: ${show(got)}`);

  for (const m of msgs) {
    if (m.type === "reply.text") expect(isStr(m.delta), () => `reply.text without a string delta: ${show(m)}`);
    if (m.type === "story") expect(isStr(m.kind), () => `story message without a kind: ${show(m)}`);
    if (m.type === "error") expect(isStr(m.code) && isStr(m.message), () => `malformed error in the turn: ${show(m)}`);
  }
  if (!audio) {
    expect(!msgs.some((m) => m.type === "reply.audio"), "a text-only session (audio: false) got reply.audio");
    for (const m of msgs.filter((x) => x.type === "cue")) {
      expect(CUE_KINDS.has(m.kind) && isStr(m.name), () => `text-only cue must be {kind: emotion|gesture|action, name}: ${show(m)}`);
    }
  }
  return end;
}

function ttsFailed(end) {
  return Array.isArray(end.degraded) && end.degraded.some((d) => d?.stage === "tts");
}

function checkTimings(timings, expect) {
  if (!expect(isObj(timings), () => `turn.end.timings must be a map, got ${show(timings)}`)) return;
  for (const [k, v] of Object.entries(timings)) expect(isNum(v) && v >= 0, () => `timings.${k} = ${show(v)} is not a non-negative number`);
  expect(isNum(timings.total), "timings.total is missing");
  for (const chain of STAGE_CHAINS) {
    const present = chain.filter((s) => isNum(timings[s]));
    for (let i = 1; i < present.length; i++) {
      const [a, b] = [present[i - 1], present[i]];
      expect(timings[a] <= timings[b], () => `timings.${a} (${timings[a]} ms) comes after timings.${b} (${timings[b]} ms)`);
    }
  }
}

/** Audio-specific checks: chunk numbering, offsets, durations, cue references and tracks. */
function checkAudioTurn(msgs, expect, rate) {
  const chunks = msgs.filter((m) => m.type === "reply.audio");
  expect(chunks.length > 0, "an audio session's reply had no reply.audio chunk");
  let offset = 0;
  let sent = -1;
  for (const m of msgs) {
    if (m.type === "reply.audio") {
      expect(m.chunk === sent + 1, () => `reply.audio chunk ${m.chunk} after chunk ${sent}`);
      sent = m.chunk;
      const pcmOk = expect(m.pcm instanceof Uint8Array, () => `reply.audio.pcm must be msgpack bin, got ${typeof m.pcm}`);
      expect(m.rate === rate, () => `reply.audio.rate ${m.rate} differs from hello.ok audio_out.rate ${rate}`);
      expect(m.channels === 1 && m.format === "pcm_s16le", () => `reply.audio must be mono pcm_s16le: ${show(m)}`);
      if (pcmOk) {
        expect(m.pcm.length % 2 === 0, "reply.audio.pcm has an odd number of bytes");
        const seconds = m.pcm.length / 2 / m.rate;
        expect(Math.abs(seconds - m.duration) < 0.002, () => `chunk ${m.chunk}: duration ${m.duration} s but pcm holds ${seconds.toFixed(4)} s`);
      }
      expect(Math.abs(m.start - offset) < 0.002, () => `chunk ${m.chunk} starts at ${m.start} s; previous chunks end at ${offset.toFixed(4)} s`);
      offset += isNum(m.duration) ? m.duration : 0;
      expect(isStr(m.text), () => `chunk ${m.chunk} has no text`);
    } else if (m.type === "cue") {
      if (m.chunk === undefined && ttsFailed(msgs[msgs.length - 1])) {
        // The voice failed mid-turn: the rest of the turn is text, with cues untied to audio.
        expect(CUE_KINDS.has(m.kind) && isStr(m.name), () => `bad cue ${show(m)}`);
        continue;
      }
      expect(isInt(m.chunk) && m.chunk <= sent, () => `cue ${show(m).slice(0, 120)} refers to a chunk not sent yet (last ${sent})`);
      const chunk = chunks.find((c) => c.chunk === m.chunk);
      const dur = chunk ? chunk.duration + 0.01 : Infinity;
      if (m.kind === "visemes" || m.kind === "words") {
        const key = m.kind === "visemes" ? "viseme" : "word";
        const track = m[m.kind];
        if (!expect(Array.isArray(track) && track.length > 0, () => `cue ${m.kind} without a ${m.kind} list`)) continue;
        let prev = 0;
        for (const t of track) {
          expect(isStr(t[key]) && (key === "word" || VISEMES.has(t[key])), () => `bad ${key} entry ${show(t)}`);
          expect(isNum(t.start) && isNum(t.end) && prev - 1e-6 <= t.start && t.start <= t.end && t.end <= dur,
            () => `${key} ${show(t)} is out of order or outside its chunk (0..${dur.toFixed(3)} s)`);
          prev = t.start;
        }
      } else {
        expect(CUE_KINDS.has(m.kind) && isStr(m.name) && isNum(m.at), () => `bad cue ${show(m)}`);
      }
    }
  }
  const end = msgs[msgs.length - 1];
  expect(Math.abs(end.audio_seconds - offset) < 0.01, () => `turn.end.audio_seconds ${end.audio_seconds} but the chunks add up to ${offset.toFixed(3)} s`);
  // first_audio_sent is the reply's own first words; an ack (ack: true) has ack_sent instead.
  if (chunks.some((c) => !c.ack)) {
    expect(isNum(end.timings?.tts_first_chunk) && isNum(end.timings?.first_audio_sent),
      "timings lack tts_first_chunk / first_audio_sent in a turn that sent the reply's own audio");
  }
  if (chunks.some((c) => c.ack)) {
    expect(isNum(end.timings?.ack_sent), "timings lack ack_sent in a turn that sent an ack");
  }
}

function staleAfter(conn, sid, tid) {
  return conn.takeAll((m) => m.session === sid && m.turn === tid);
}

// --------------------------------------------------------------------------- scenes

// A banter topic any two characters can talk about, and the player's line that cuts one short.
const BANTER_TOPIC = "the weather this week";
const BANTER_LINES_CUT = 6;
// After an answer, how long to watch for a reaction that must not come. A reaction starts right
// after the answer's turn.end; the watcher in sceneChecks keeps looking for the rest of the run.
const QUIET_MS = 3000;

/** The scene's two characters: --scene, else marta and bram when loaded, else the first two listed. */
function sceneCast(hello) {
  if (opts.scene) return opts.scene;
  const ids = hello.characters.map((c) => c.id);
  return ids.includes("marta") && ids.includes("bram") ? ["marta", "bram"] : ids.slice(0, 2);
}

/**
 * Scenes (docs/protocol.md, section 16): one player and two characters in one conversation,
 * addressed like a session. Checks who answers (by name, forced, facing), reactions on and
 * off, join/leave, banter (a dialogue between the characters) whole and cut short by the
 * player, the scene errors, save/load, resume and close.
 */
async function sceneChecks(conn, hello, player, ended) {
  const [a, b] = sceneCast(hello);
  const names = new Map(hello.characters.map((c) => [c.id, c.name]));
  if (!b || !names.has(a) || !names.has(b)) {
    note(`scene checks skipped: the scene needs two loaded characters (got ${show([a, b])}, loaded ${show([...names.keys()])})`);
    return;
  }
  const third = hello.characters.find((c) => c.id !== a && c.id !== b)?.id ?? null;
  const cast = [a, b, third].filter(Boolean);
  const rate = hello.audio_out?.rate;
  const audio = Boolean(opts.audio && rate);
  const scid = `scene-${randomBytes(4).toString("hex")}`;
  note(`scene ${scid}: ${a} and ${b}${third ? ` (${third} joins and leaves)` : ""}, ${audio ? "with audio" : "text only"}`);

  // Rules that hold for every message of the scene, whichever check is running.
  let reactionsOff = false;
  const strays = [];
  const watch = (m) => {
    if (m.session !== scid || !isInt(m.turn)) return;
    if (m.type !== "story" && !cast.includes(m.character)) strays.push(`${m.type} of turn ${m.turn} names character ${show(m.character)}`);
    if (reactionsOff && m.type === "turn.start" && m.source === "reaction") {
      strays.push(`a reaction (turn ${m.turn}, ${m.character}) after reactions were turned off`);
    }
  };
  conn.watchers.push(watch);

  const sceneTurnStart = async (rid, what) => {
    const m = await conn.next(
      (x) => (x.session === scid && x.type === "turn.start" && x.id === rid && !ended(scid).has(x.turn)) ||
        (x.type === "error" && x.id === rid),
      TURN_MS, `turn.start for ${what}`);
    if (m.type === "error") throw new Error(`${what} got an error instead of a turn: ${show(m)}`);
    return m;
  };
  /** Read a scene turn to its turn.end; every message must name the character its turn.start names. */
  const readSceneTurn = async (start, expect, onMessage) => {
    const msgs = await readTurn(conn, scid, start.turn, start, onMessage);
    ended(scid).add(start.turn);
    expect(cast.includes(start.character), () => `turn ${start.turn} is spoken by ${show(start.character)}, not a character of the scene`);
    const end = checkTurnShape(msgs, scid, expect, { audio, character: start.character });
    if (audio && end.status !== "cancelled") checkAudioTurn(msgs, expect, rate);
    return msgs;
  };
  /** The player says `text` to the scene; returns the answering turn. */
  const say = async (expect, text, extra = {}) => {
    const rid = conn.newId();
    await conn.send({ type: "text", session: scid, text, id: rid, ...extra });
    const start = await sceneTurnStart(rid, `the line ${show(text)}`);
    expect(start.source === "text" && start.input === text, () => `turn.start source/input wrong: ${show(start)}`);
    const msgs = await readSceneTurn(start, expect);
    return { start, msgs, end: msgs[msgs.length - 1] };
  };
  /** The next turn of the scene that nobody asked for (a reaction), or null after `ms`. */
  const nextUnasked = async (ms) => {
    try {
      return await conn.next((x) => x.session === scid && x.type === "turn.start" && !ended(scid).has(x.turn), ms, "a reaction turn");
    } catch (err) {
      if (err instanceof Timeout) return null;
      throw err;
    }
  };
  /** Read a banter's lines (turns echoing `rid`) until its banter.end. */
  const readBanter = async (rid, expect, onMessage) => {
    const turns = [];
    for (;;) {
      const m = await conn.next(
        (x) => (x.session === scid && ((x.type === "turn.start" && x.id === rid && !ended(scid).has(x.turn)) || x.type === "banter.end")) ||
          (x.type === "error" && x.id === rid),
        TURN_MS, `the next banter line or banter.end for ${rid}`);
      if (m.type === "error") throw new Error(`scene.banter got an error: ${show(m)}`);
      if (m.type === "banter.end") {
        expect(m.id === rid, () => `banter.end echoes id ${show(m.id)}, not ${rid}`);
        expect(isInt(m.lines) && m.lines >= 0 && typeof m.interrupted === "boolean",
          () => `banter.end must carry lines (int) and interrupted (bool): ${show(m)}`);
        // A whole banter ends after its last line; one cut short may end before the cut line's turn.end.
        const last = turns.at(-1)?.at(-1);
        if (m.interrupted === false) expect(!last || last._n < m._n, "banter.end came before the last line's turn.end");
        return { turns, end: m };
      }
      expect(m.source === "banter", () => `a banter line's turn.start has source ${show(m.source)}, not banter`);
      turns.push(await readSceneTurn(m, expect, onMessage));
    }
  };
  const update = (fields) => conn.request({ type: "scene.update", session: scid, ...fields }, "scene.update");
  /** scene.opened / scene.updated / scene.resumed: who is in the scene, in order, and its settings. */
  const checkScene = (r, expect, type, want) => {
    if (!expect(r.type === type, () => `got ${show(r)}, not ${type}`)) return false;
    expect(r.session === scid && r.player === player, () => `session/player wrong: ${show(r)}`);
    const list = Array.isArray(r.characters) ? r.characters : [];
    expect(Array.isArray(r.characters) && list.every((c) => isObj(c) && isStr(c.character) && isStr(c.name) && (c.beat == null || isStr(c.beat))),
      () => `characters must be a list of {character, name, beat?}: ${show(r.characters)}`);
    const ids = list.map((c) => c?.character);
    expect(show(ids) === show(want.characters), () => `characters ${show(ids)}, expected ${show(want.characters)} in this order`);
    expect(list.every((c) => c?.name === names.get(c?.character)), () => `names differ from hello.ok's: ${show(list)}`);
    expect(r.audio === audio && (audio ? r.sample_rate === rate : r.sample_rate === undefined),
      () => `audio/sample_rate ${show(r.audio)}/${show(r.sample_rate)}, expected ${audio}/${audio ? rate : "absent"}`);
    if ("reactions" in want) expect(r.reactions === want.reactions, () => `reactions ${show(r.reactions)}, expected ${want.reactions}`);
    if ("facing" in want) expect((r.facing ?? null) === want.facing, () => `facing ${show(r.facing)}, expected ${show(want.facing)}`);
    return true;
  };
  const errorReply = (r, code, what, expect) =>
    expect(r.type === "error" && r.code === code && isStr(r.message) && r.message.length > 0,
      () => `${what} got ${show(r)}, not error ${code}`);

  let opened = null;
  await check(`scene.open (${a}, ${b}) is answered by scene.opened: id echoed, both characters in order, a token`, async (expect) => {
    const r = await conn.request({ type: "scene.open", characters: [a, b], player, session: scid, greet: false, audio }, "scene.open");
    if (!checkScene(r, expect, "scene.opened", { characters: [a, b], reactions: true, facing: null })) return;
    opened = r;
    expect(typeof r.resumed === "boolean", "resumed must be a boolean");
    expect(isStr(r.token) && r.token.length > 0, "scene.opened must carry the scene's resume token");
  });
  if (!opened) {
    note("the other scene checks need a scene");
    conn.watchers.splice(conn.watchers.indexOf(watch), 1);
    return;
  }

  await check(`who answers, by name: "${names.get(b)}, ..." is answered by ${b}; ${a}, named in the line, reacts (source reaction)`, async (expect) => {
    const { start } = await say(expect, `${names.get(b)}, what do you think of ${names.get(a)}?`);
    expect(start.character === b, () => `${start.character} answered a line addressed to ${names.get(b)}`);
    const r = await nextUnasked(TURN_MS);
    if (!expect(r !== null, `no reaction by ${a} after the answer`)) return;
    expect(r.source === "reaction" && r.character === a && r.seq === 0,
      () => `the turn after the answer is ${show(r)}, not a reaction (turn.start, source reaction) by ${a}`);
    expect(r.id === start.id, () => `the reaction's turn.start echoes id ${show(r.id)}, not the player's line's ${show(start.id)}`);
    await readSceneTurn(r, expect);
  });

  await check("scene.update reactions: false is answered by scene.updated (reactions false)", async (expect) => {
    const r = await update({ reactions: false });
    if (checkScene(r, expect, "scene.updated", { characters: [a, b], reactions: false, facing: null })) reactionsOff = true;
  });

  await check(`who answers, forced: the same line with character: ${a} is answered by ${a}; no reaction follows (reactions off)`, async (expect) => {
    const { start } = await say(expect, `${names.get(b)}, what do you think of ${names.get(a)}?`, { character: a });
    expect(start.character === a, () => `${start.character} answered, though the text forced ${a}`);
    const r = await nextUnasked(QUIET_MS);
    expect(r === null, () => `a turn nobody asked for followed the answer: ${show(r)}`);
    if (r) await readSceneTurn(r, expect);
  });

  await check(`who answers, facing: scene.update facing: ${b}, then a line naming nobody is answered by ${b} (the last speaker was ${a})`, async (expect) => {
    const r = await update({ facing: b });
    checkScene(r, expect, "scene.updated", { characters: [a, b], reactions: false, facing: b });
    const { start } = await say(expect, "What news is there today?");
    expect(start.character === b, () => `${start.character} answered, though the player faces ${b}`);
    const c = await update({ facing: null });
    checkScene(c, expect, "scene.updated", { characters: [a, b], reactions: false, facing: null });
  });

  await check(`join and leave: scene.updated lists who is present; the last character cannot leave (invalid_field)`, async (expect) => {
    let r = await update({ leave: [b] });
    checkScene(r, expect, "scene.updated", { characters: [a] });
    errorReply(await update({ leave: [a] }), "invalid_field", `leaving with only ${a} left`, expect);
    r = await update({ join: [b] });
    checkScene(r, expect, "scene.updated", { characters: [a, b] });
    if (third) {
      r = await update({ join: [third] });
      checkScene(r, expect, "scene.updated", { characters: [a, b, third] });
      r = await update({ leave: [third] });
      checkScene(r, expect, "scene.updated", { characters: [a, b] });
    }
    errorReply(await update({ join: [a] }), "invalid_field", `joining ${a}, already present`, expect);
    errorReply(await update({ join: ["no_such_character_zz"] }), "unknown_character", "joining an unknown character", expect);
  });

  await check(`scene.banter (a topic, lines: 2): two lines by ${a} and ${b} (source banter, id echoed${audio ? ", each voiced" : ""}), then banter.end`, async (expect) => {
    const rid = conn.newId();
    await conn.send({ type: "scene.banter", session: scid, topic: BANTER_TOPIC, lines: 2, id: rid });
    const { turns, end } = await readBanter(rid, expect);
    const speakers = turns.map((t) => t[0].character);
    expect(turns.length === 2, () => `${turns.length} banter lines, expected 2`);
    expect(speakers.length === 2 && speakers[0] !== speakers[1] && speakers.every((s) => s === a || s === b),
      () => `the lines were said by ${show(speakers)}, not by ${a} and ${b} in turn`);
    expect(turns.every((t) => t.some((m) => m.type === "reply.text")), "a banter line sent no reply.text");
    if (audio) expect(turns.every((t) => t.some((m) => m.type === "reply.audio")), "a banter line sent no reply.audio");
    expect(end.lines === 2 && end.interrupted === false, () => `banter.end ${show(end)}, expected lines 2, interrupted false`);
  });

  await check("a text during a banter stops it (banter.end interrupted, or fewer lines), and the player's line is answered", async (expect) => {
    const rid = conn.newId();
    const ridText = conn.newId();
    const line = "Sorry to interrupt, can I ask something?";
    let sent = false;
    await conn.send({ type: "scene.banter", session: scid, topic: BANTER_TOPIC, lines: BANTER_LINES_CUT, id: rid });
    const { turns, end } = await readBanter(rid, expect, async (m) => {
      if (!sent && m.type === "reply.text") {
        sent = true;
        await conn.send({ type: "text", session: scid, text: line, id: ridText });
      }
    });
    if (!expect(sent, "the banter ended before any line sent reply.text")) return;
    expect(end.interrupted === true || end.lines < BANTER_LINES_CUT,
      () => `banter.end ${show(end)}: neither interrupted nor cut short of ${BANTER_LINES_CUT} lines`);
    const start = await sceneTurnStart(ridText, "the player's line during the banter");
    expect(start.source === "text" && start.input === line, () => `turn.start source/input wrong: ${show(start)}`);
    const lastLineEnd = turns.at(-1)?.at(-1);
    expect(!lastLineEnd || lastLineEnd._n < start._n, "the player's turn.start came before the banter line's turn.end");
    await readSceneTurn(start, expect);
    const more = conn.takeAll((m) => m.session === scid && m.id === rid);
    expect(more.length === 0, () => `the banter went on after the player spoke: ${show(more).slice(0, 300)}`);
  });

  await check("scene errors: scene.open with an unknown character -> unknown_character; scene.banter without topic or beat -> invalid_field", async (expect) => {
    errorReply(await conn.request({ type: "scene.open", characters: [a, "no_such_character_zz"], player, greet: false }, "scene.open"),
      "unknown_character", "scene.open with an unknown character", expect);
    errorReply(await conn.request({ type: "scene.banter", session: scid, lines: 2 }, "scene.banter"),
      "invalid_field", "scene.banter without topic or beat", expect);
  });

  await check("state.save / state.load on the scene id -> state.saved (bin blob) / state.loaded", async (expect) => {
    const s = await conn.request({ type: "state.save", session: scid }, "state.save");
    if (!expect(s.type === "state.saved" && s.blob instanceof Uint8Array && s.blob.length > 0, () => `state.save got ${show(s)}`)) return;
    expect(s.session === scid && s.player === player, () => `state.saved session/player wrong: ${show(s)}`);
    const l = await conn.request({ type: "state.load", session: scid, blob: s.blob }, "state.load");
    expect(l.type === "state.loaded" && l.session === scid && l.player === player, () => `state.load got ${show(l)}`);
  });

  await check("another connection takes the scene with session.resume and its token (scene.resumed), and gives it back", async (expect) => {
    const other = new Connection(opts.endpoint, opts.verbose);
    try {
      const r = await other.request({ type: "session.resume", session: scid, token: opened.token }, "session.resume");
      checkScene(r, expect, "scene.resumed", { characters: [a, b], reactions: false, facing: null });
      errorReply(await conn.request({ type: "state.get", session: scid }, "state.get"), "forbidden",
        "the old connection's state.get after the resume", expect);
      const back = await conn.request({ type: "session.resume", session: scid, token: opened.token }, "session.resume");
      checkScene(back, expect, "scene.resumed", { characters: [a, b] });
    } finally {
      other.close();
    }
  });

  await check("session.close on the scene id -> session.closed; a text afterwards -> session_closed", async (expect) => {
    const r = await conn.request({ type: "session.close", session: scid }, "session.close");
    expect(r.type === "session.closed" && r.session === scid, () => `got ${show(r)}`);
    errorReply(await conn.request({ type: "text", session: scid, text: "Hello?" }, "text"), "session_closed", "a text to the closed scene", expect);
  });

  conn.watchers.splice(conn.watchers.indexOf(watch), 1);
  await check("every turn message of the scene named one of its characters; no reaction after reactions were turned off", async (expect) => {
    expect(strays.length === 0, () => strays.slice(0, 8).join("; "));
  });
}

// --------------------------------------------------------------------------- the run

async function main() {
  const conn = new Connection(opts.endpoint, opts.verbose);
  const finished = new Map(); // session id -> Set of ended turn ids
  const ended = (sid) => finished.get(sid) ?? finished.set(sid, new Set()).get(sid);
  const player = `conformance-${randomBytes(4).toString("hex")}`;
  let hello = null;

  // ---- hello
  await check("hello is answered by hello.ok with the engine's capabilities", async (expect) => {
    const r = await conn.request({ type: "hello", client: "npc-engine-conformance/1 (node)" }, "hello");
    hello = r;
    if (!expect(r.type === "hello.ok", () => `got ${show(r)}`)) return;
    expect(r.v === PROTOCOL_VERSION && r.protocol === PROTOCOL_VERSION, () => `v/protocol are ${r.v}/${r.protocol}, expected 1`);
    expect(isStr(r.engine) && r.engine.length > 0, "engine (name/version) missing");
    expect(Array.isArray(r.characters) && r.characters.length > 0 && r.characters.every((c) => isStr(c.id) && isStr(c.name)),
      () => `characters must be a non-empty list of {id, name}: ${show(r.characters)}`);
    const ai = r.audio_in;
    expect(isObj(ai) && ai.rate === 16000 && ai.channels === 1 && ai.format === "pcm_s16le" && isNum(ai.frame_ms),
      () => `audio_in must be {rate: 16000, channels: 1, format: pcm_s16le, frame_ms}: ${show(ai)}`);
    if (r.audio_out !== undefined) {
      const ao = r.audio_out;
      expect(isObj(ao) && isInt(ao.rate) && ao.rate > 0 && ao.channels === 1 && ao.format === "pcm_s16le",
        () => `audio_out must be {rate, channels: 1, format: pcm_s16le}: ${show(ao)}`);
    }
    expect(typeof r.stt === "boolean", "stt must be a boolean");
    expect(isInt(r.max_message_bytes) && r.max_message_bytes > 0, "max_message_bytes must be a positive integer");
    expect(typeof r.warming === "boolean", "warming must be a boolean");
  });
  if (hello?.type !== "hello.ok") {
    note(`no usable engine at ${opts.endpoint}; the remaining checks need one` +
      (opts.serverKey ? " (is --server-key the engine's public key?)"
        : " (an engine started with --curve-secret-key answers only a client given --server-key)"));
    conn.close();
    finish(1);
  }
  const character = opts.character ?? hello.characters[0].id;
  if (!hello.characters.some((c) => c.id === character)) {
    note(`character ${character} is not among ${hello.characters.map((c) => c.id).join(", ")}`);
  }
  note(`engine ${hello.engine}; talking to ${character} as player ${player}`);

  // ---- session.open (text only, no greeting, a session id chosen by the game)
  const sid = `conf-${randomBytes(4).toString("hex")}`;
  let opened = null;
  await check("session.open (greet: false, audio: false) is answered by session.opened", async (expect) => {
    const r = await conn.request(
      { type: "session.open", character, player, session: sid, greet: false, audio: false, vars: { player_name: "Tester" } },
      "session.open",
    );
    if (!expect(r.type === "session.opened", () => `got ${show(r)}`)) return;
    opened = r;
    expect(r.session === sid, () => `session ${show(r.session)} is not the requested ${sid}`);
    expect(r.character === character && isStr(r.name), () => `character/name wrong: ${show(r)}`);
    expect(r.player === player, () => `player ${show(r.player)} is not ${player}`);
    expect(r.audio === false, "audio must be false when the game asked for text only");
    expect(typeof r.resumed === "boolean", "resumed must be a boolean");
    expect(r.beat === undefined || isStr(r.beat), "beat must be a string when present");
    expect(isStr(r.token) && r.token.length > 0, "session.opened must carry the session's resume token");
  });
  if (!opened) {
    note("cannot go on without a session");
    conn.close();
    finish(1);
  }

  // ---- a text turn, streamed
  await check("text: turn.start first (id echoed), seq from 0, reply.text deltas, turn.end last with ordered timings", async (expect) => {
    const rid = conn.newId();
    const line = "Hello there! What do you do here?";
    await conn.send({ type: "text", session: sid, text: line, id: rid });
    const { tid, start } = await awaitTurnStart(conn, sid, rid, expect, ended(sid));
    expect(start.source === "text" && start.input === line, () => `turn.start source/input wrong: ${show(start)}`);
    const msgs = await readTurn(conn, sid, tid, start);
    ended(sid).add(tid);
    const end = checkTurnShape(msgs, sid, expect, { audio: false, character });
    expect(msgs.some((m) => m.type === "reply.text" && m.delta.length > 0), "no reply.text delta in the turn");
    expect(end.status === "ok" || end.status === "degraded", () => `status ${end.status}: ${show(end)}`);
    expect(end.interrupted === false, "an uninterrupted turn reports interrupted: true");
    const errs = msgs.filter((m) => m.type === "error");
    expect(errs.length === 0, () => `errors inside the turn: ${show(errs)}`);
    note(`turn ${tid}: ${msgs.length} messages, status ${end.status}, timings ${show(end.timings)}`);
  });

  // ---- a greeting: an engine-initiated turn right after session.opened
  await check("session.open with greet: true -> session.opened, then a greeting turn (source greeting, no id)", async (expect) => {
    const r = await conn.request({ type: "session.open", character, player, greet: true, audio: false }, "session.open");
    if (!expect(r.type === "session.opened", () => `got ${show(r)}`)) return;
    const gsid = r.session;
    expect(!conn.inbox.some((m) => m.session === gsid && m._n < r._n), "a turn message arrived before session.opened");
    let start = null;
    try {
      start = await conn.next((m) => m.session === gsid && isInt(m.turn), REPLY_MS, "greeting turn");
    } catch (err) {
      if (!(err instanceof Timeout)) throw err;
      note(`${character} sent no greeting within ${opts.replyS} s (a character without greeting lines has none)`);
    }
    if (start) {
      expect(start.type === "turn.start" && start.seq === 0 && start.source === "greeting" && start.id === undefined,
        () => `a greeting must open with turn.start {seq: 0, source: greeting} and no id: ${show(start)}`);
      const msgs = await readTurn(conn, gsid, start.turn, start);
      ended(gsid).add(start.turn);
      const end = checkTurnShape(msgs, gsid, expect, { audio: false, character });
      expect(msgs.some((m) => m.type === "reply.text"), "the greeting sent no reply.text");
      expect(end.status === "ok", () => `greeting status ${end.status}`);
    }
    const c = await conn.request({ type: "session.close", session: gsid }, "session.close");
    expect(c.type === "session.closed", () => `closing the greeting session got ${show(c)}`);
  });

  // ---- cancel mid-stream
  await check("cancel after the first reply.text ends the turn with status cancelled and nothing after it", async (expect) => {
    for (let attempt = 1; attempt <= CANCEL_ATTEMPTS; attempt++) {
      const rid = conn.newId();
      await conn.send({ type: "text", session: sid, text: LONG_PROMPT, id: rid });
      const { tid, start } = await awaitTurnStart(conn, sid, rid, expect, ended(sid));
      let cancelledAt = -1;
      const msgs = await readTurn(conn, sid, tid, start, async (m, all) => {
        if (m.type === "reply.text" && cancelledAt < 0) {
          cancelledAt = all.length;
          await conn.send({ type: "cancel", session: sid, turn: tid, id: conn.newId() });
        }
      });
      ended(sid).add(tid);
      const end = checkTurnShape(msgs, sid, expect, { audio: false, character });
      if (end.status !== "cancelled" && cancelledAt >= 0 && attempt < CANCEL_ATTEMPTS) {
        // A cancel that reaches the engine after the turn ended is a no-op by contract.
        note(`turn ${tid} finished (${end.status}) before the cancel arrived; trying again`);
        continue;
      }
      expect(cancelledAt >= 0, "the turn had no reply.text to cancel after");
      expect(end.status === "cancelled", () => `turn.end status is ${end.status}, not cancelled (after ${CANCEL_ATTEMPTS} tries)`);
      expect(end.interrupted === true, "a cancelled turn must report interrupted: true");
      await sleep(500);
      const stale = staleAfter(conn, sid, tid);
      expect(stale.length === 0, () => `messages of turn ${tid} after its turn.end: ${stale.map((m) => m.type).join(", ")}`);
      return;
    }
  });

  // ---- barge-in: a new line while a turn streams
  await check("barge-in: a new text mid-turn cancels the old turn (turn.end first), then the new turn starts", async (expect) => {
    for (let attempt = 1; attempt <= CANCEL_ATTEMPTS; attempt++) {
      const ridA = conn.newId();
      const ridB = conn.newId();
      await conn.send({ type: "text", session: sid, text: LONG_PROMPT, id: ridA });
      const a = await awaitTurnStart(conn, sid, ridA, expect, ended(sid));
      // Mid-stream (after its first reply.text) while tries remain; a short reply can end before
      // the new line arrives, so the last try sends it as soon as turn A has started (the model
      // is still reading its prompt then), where it cannot lose that race.
      const firstA = attempt < CANCEL_ATTEMPTS
        ? await conn.next(
          (m) => m.session === sid && m.turn === a.tid && (m.type === "reply.text" || m.type === "turn.end"),
          TURN_MS, `reply.text of turn ${a.tid}`)
        : a.start;
      await conn.send({ type: "text", session: sid, text: "Sorry, never mind. Goodbye!", id: ridB });
      const endA = firstA.type === "turn.end" ? firstA
        : await conn.next((m) => m.session === sid && m.turn === a.tid && m.type === "turn.end", TURN_MS, `turn.end of turn ${a.tid}`);
      ended(sid).add(a.tid);
      staleAfter(conn, sid, a.tid); // the rest of turn A's stream, already checked elsewhere
      const b = await awaitTurnStart(conn, sid, ridB, expect, ended(sid));
      const msgsB = await readTurn(conn, sid, b.tid, b.start);
      ended(sid).add(b.tid);
      checkTurnShape(msgsB, sid, expect, { audio: false, character });
      if (endA.status !== "cancelled" && attempt < CANCEL_ATTEMPTS) {
        note(`turn ${a.tid} finished (${endA.status}) before the new line arrived; trying again`);
        continue;
      }
      expect(endA.status === "cancelled" && endA.interrupted === true,
        () => `the interrupted turn ended with status ${endA.status}, interrupted ${endA.interrupted}`);
      expect(endA._n < b.start._n, "the new turn.start arrived before the old turn's turn.end");
      expect(b.tid > a.tid, () => `the new turn id ${b.tid} is not greater than ${a.tid}`);
      return;
    }
  });

  // ---- errors: each gets an error with its stable code; nothing dies
  const errorCheck = async (name, code, send, { echoId = true, session } = {}) =>
    check(`${name} -> error ${code}`, async (expect) => {
      const id = echoId ? conn.newId() : undefined;
      await send(id);
      const r = echoId
        ? await conn.next((m) => m.id === id, REPLY_MS, `reply to the ${name}`)
        : await conn.nextAnonymousError(name);
      if (!expect(r.type === "error", () => `got ${show(r)}`)) return;
      expect(r.code === code, () => `code ${show(r.code)}, expected ${code} (message: ${r.message})`);
      expect(isStr(r.message) && r.message.length > 0, "an error needs a human-readable message");
      expect(r.v === PROTOCOL_VERSION, "error lacks v: 1");
      if (session !== undefined) expect(r.session === session, () => `error.session ${show(r.session)}, expected ${session}`);
    });

  await errorCheck("bytes that are not msgpack", "bad_message",
    () => conn.sendFrames([Buffer.from([0xc1, 0xc1, 0x6e, 0x6f, 0x74, 0x20, 0x6d, 0x73, 0x67, 0x70, 0x61, 0x63, 0x6b])]), { echoId: false });
  await errorCheck("a msgpack array instead of a map", "bad_message",
    () => conn.sendFrames([encode([1, "ping"])]), { echoId: false });
  await errorCheck("protocol version 2", "unsupported_version", (id) => conn.sendFrames([encode({ v: 2, type: "ping", id })]));
  await errorCheck("a message without type", "invalid_field", (id) => conn.send({ id }));
  await errorCheck("an unknown type", "unknown_type", (id) => conn.send({ type: "teleport", session: sid, id }));
  await errorCheck("text without its text field", "invalid_field", (id) => conn.send({ type: "text", session: sid, id }), { session: sid });
  await errorCheck("a text to an unknown session", "unknown_session",
    (id) => conn.send({ type: "text", session: "no-such-session", text: "hi", id }), { session: "no-such-session" });
  await errorCheck("session.open for an unknown character", "unknown_character",
    (id) => conn.send({ type: "session.open", character: "no_such_character_zz", player, greet: false, id }));
  await errorCheck("session.open with an id that is already open", "invalid_field",
    (id) => conn.send({ type: "session.open", character, player, session: sid, greet: false, audio: false, id }));
  await errorCheck("audio at 44.1 kHz", "bad_audio",
    (id) => conn.send({ type: "audio", session: sid, pcm: new Uint8Array(1764), rate: 44100, id }), { session: sid });
  await errorCheck("state.load with the blob as a string (base64), not bin", "invalid_field",
    (id) => conn.send({ type: "state.load", session: sid, blob: "bnBjLWVuZ2luZQ==", id }));
  await errorCheck(`a message over max_message_bytes (${hello.max_message_bytes})`, "too_large",
    () => conn.sendFrames([encode({ v: 1, type: "ping", pad: new Uint8Array(hello.max_message_bytes + 1) })]), { echoId: false });

  // ---- ping / pong, with an integer id and with a REQ-style empty delimiter frame
  await check("ping is answered by pong echoing id (an integer) and t", async (expect) => {
    const t = Date.now() / 1000;
    const r = await conn.request({ type: "ping", id: 4242, t }, "ping");
    expect(r.type === "pong" && r.id === 4242 && r.t === t && isNum(r.server_time) && typeof r.warming === "boolean",
      () => `got ${show(r)}`);
  });
  await check("a message preceded by an empty delimiter frame is accepted", async (expect) => {
    const id = conn.newId();
    await conn.sendFrames([Buffer.alloc(0), encode({ v: 1, type: "ping", id })]);
    const r = await conn.next((m) => m.id === id, REPLY_MS, "pong");
    expect(r.type === "pong", () => `got ${show(r)}`);
  });
  await check("an unknown field is ignored (fields may grow)", async (expect) => {
    const r = await conn.request({ type: "ping", future_field: { any: ["thing"] } }, "ping");
    expect(r.type === "pong", () => `got ${show(r)}`);
  });

  // ---- event
  await check("event is answered by event.ok with a list of effects", async (expect) => {
    const r = await conn.request({ type: "event", session: sid, name: "conformance_probe", data: { n: 1 } }, "event");
    expect(r.type === "event.ok" && r.name === "conformance_probe" && Array.isArray(r.effects), () => `got ${show(r)}`);
    for (const e of r.effects ?? []) expect(isObj(e) && isStr(e.kind), () => `effect without a kind: ${show(e)}`);
  });

  // ---- save / load
  let blob = null;
  await check("state.save returns state.saved with a bin blob (the session survived the errors)", async (expect) => {
    const r = await conn.request({ type: "state.save", session: sid }, "state.save");
    if (!expect(r.type === "state.saved", () => `got ${show(r)}`)) return;
    expect(r.blob instanceof Uint8Array && r.blob.length > 0, () => `blob must be non-empty msgpack bin, got ${typeof r.blob}`);
    expect(r.session === sid && r.player === player, () => `session/player wrong: ${show(r)}`);
    blob = r.blob;
  });
  await check("state.load of a garbage blob -> error bad_state", async (expect) => {
    const r = await conn.request({ type: "state.load", session: sid, blob: new Uint8Array(randomBytes(64)) }, "state.load");
    expect(r.type === "error" && r.code === "bad_state", () => `got ${show(r)}`);
  });
  if (blob) {
    await check("state.load of the saved blob is answered by state.loaded", async (expect) => {
      const r = await conn.request({ type: "state.load", session: sid, blob }, "state.load");
      expect(r.type === "state.loaded" && r.session === sid && r.player === player, () => `got ${show(r)}`);
    });
  }

  // ---- ownership: a session belongs to its connection; session.resume with the token moves it
  await check("another connection gets forbidden for this session and player; session.resume with the token moves the session (and back)", async (expect) => {
    const other = new Connection(opts.endpoint, opts.verbose);
    const refused = (r, what) =>
      expect(r.type === "error" && r.code === "forbidden", () => `${what} from another connection got ${show(r)}, not error forbidden`);
    try {
      const h = await other.request({ type: "hello", client: "npc-engine-conformance/1 (second connection)" }, "hello");
      if (!expect(h.type === "hello.ok", () => `the second connection's hello got ${show(h)}`)) return;
      const t = await other.request({ type: "text", session: sid, text: "Hello?" }, "text");
      refused(t, "text");
      expect(t.session === sid, () => `the forbidden error names session ${show(t.session)}, not ${sid}`);
      refused(await other.request({ type: "state.get", session: sid }, "state.get"), "state.get by session");
      refused(await other.request({ type: "state.get", player }, "state.get"), "state.get by player");
      refused(await other.request({ type: "event", player, name: "conformance_probe" }, "event"), "event by player");
      refused(await other.request({ type: "session.resume", session: sid, token: `${opened.token}x` }, "session.resume"),
        "session.resume with a wrong token");
      const r = await other.request({ type: "session.resume", session: sid, token: opened.token }, "session.resume");
      if (!expect(r.type === "session.resumed", () => `session.resume with the token got ${show(r)}`)) return;
      expect(r.session === sid && r.character === character && r.player === player && r.audio === false,
        () => `session.resumed must carry the session's fields, like session.opened: ${show(r)}`);
      const e = await other.request({ type: "event", session: sid, name: "conformance_probe" }, "event");
      expect(e.type === "event.ok", () => `the new owner's event got ${show(e)}`);
      const g = await conn.request({ type: "state.get", session: sid }, "state.get");
      expect(g.type === "error" && g.code === "forbidden",
        () => `the old connection's state.get after the resume got ${show(g)}, not error forbidden`);
      const back = await conn.request({ type: "session.resume", session: sid, token: opened.token }, "session.resume");
      expect(back.type === "session.resumed" && back.session === sid, () => `resuming back got ${show(back)}`);
      await other.request({ type: "ping" }, "ping"); // everything sent to it so far has arrived
      const stray = other.inbox.filter((m) => m.session === sid);
      expect(stray.length === 0, () => `the second connection got the session's messages: ${show(stray).slice(0, 300)}`);
      expect(other.undecodable.length === 0, () => `undecodable messages: ${other.undecodable.join("; ")}`);
    } finally {
      other.close();
    }
  });

  // ---- audio out, if the engine speaks
  const rate = hello.audio_out?.rate;
  if (!opts.audio) note("audio step skipped (--no-audio)");
  else if (!rate) note("audio step skipped: the engine reports no audio_out (it runs with --tts none)");
  else {
    await check("audio session: reply.audio chunks (bin PCM16, contiguous offsets) with cues tied by chunk", async (expect) => {
      const r = await conn.request({ type: "session.open", character, player, greet: false, audio: true }, "session.open");
      if (!expect(r.type === "session.opened", () => `got ${show(r)}`)) return;
      const asid = r.session;
      expect(r.audio === true && r.sample_rate === rate, () => `audio/sample_rate wrong: ${show(r)}`);
      const rid = conn.newId();
      await conn.send({ type: "text", session: asid, text: "Good day! How are you?", id: rid });
      const { tid, start } = await awaitTurnStart(conn, asid, rid, expect, ended(asid));
      const msgs = await readTurn(conn, asid, tid, start);
      ended(asid).add(tid);
      const end = checkTurnShape(msgs, asid, expect, { audio: true, character });
      checkAudioTurn(msgs, expect, rate);
      const n = msgs.filter((m) => m.type === "reply.audio").length;
      note(`audio turn ${tid}: ${n} chunks, ${end.audio_seconds} s of audio, timings ${show(end.timings)}`);
      const c = await conn.request({ type: "session.close", session: asid }, "session.close");
      expect(c.type === "session.closed", () => `closing the audio session got ${show(c)}`);
    });
  }

  // ---- close
  await check("session.close is answered by session.closed", async (expect) => {
    const r = await conn.request({ type: "session.close", session: sid }, "session.close");
    expect(r.type === "session.closed" && r.session === sid, () => `got ${show(r)}`);
  });
  await errorCheck("a text to a closed session", "session_closed",
    (id) => conn.send({ type: "text", session: sid, text: "Are you still there?", id }), { session: sid });

  // ---- scenes: several characters in one conversation
  await sceneChecks(conn, hello, player, ended);

  // ---- nothing left over
  await check("no stray messages: no undecodable replies, no turn messages after turn.end, no unanswered errors", async (expect) => {
    await sleep(300);
    expect(conn.undecodable.length === 0, () => `undecodable messages from the engine: ${conn.undecodable.join("; ")}`);
    const late = conn.inbox.filter((m) => isStr(m.session) && finished.get(m.session)?.has(m.turn));
    expect(late.length === 0, () => `turn messages after their turn.end: ${show(late).slice(0, 400)}`);
    const errs = conn.inbox.filter((m) => m.type === "error");
    expect(errs.length === 0, () => `errors nobody asked for: ${show(errs).slice(0, 400)}`);
    const other = conn.inbox.filter((m) => !late.includes(m) && !errs.includes(m));
    if (other.length) note(`other messages not consumed: ${other.map((m) => m.type).join(", ")}`);
  });

  conn.close();
  finish();
}

main().catch((err) => {
  console.log(`not ok - the conformance run itself crashed: ${err?.stack ?? err}`);
  failed++;
  finish(1);
});
