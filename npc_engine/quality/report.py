"""The eval's tables: one run as markdown and JSON, and several runs side by side.

A reply *passes* when no check found anything in it. Scripted story lines (the writer's
words, said instead of a model reply) are listed but not scored.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from npc_engine.quality.checks import LOOP, REPEAT
from npc_engine.quality.eval import EvalRun, Failure, RunInfo, TurnResult

# Conversation-level failures the target names: no loop, no repeated reply.
LOOP_CHECKS = frozenset({LOOP})
REPEAT_CHECKS = frozenset({REPEAT})


@dataclass
class Tally:
    replies: int = 0
    passed: int = 0
    answered: int = 0  # passed in the model's own words: not replaced by a deflection or fallback
    adversarial: int = 0
    adversarial_passed: int = 0
    singles: int = 0
    singles_passed: int = 0
    conversation: int = 0
    conversation_passed: int = 0
    scripted: int = 0  # not scored
    fallback: int = 0  # the model gave no word: a scripted fallback line was said
    guard_acted: int = 0  # replies the guard changed (turn.end reported something)
    deflected: int = 0  # replies the guard replaced with a deflection (or a fallback line)
    failures: Counter[str] = field(default_factory=Counter)  # check -> replies it failed

    def add(self, r: TurnResult) -> None:
        if not r.scored:
            self.scripted += 1
            return
        self.replies += 1
        self.passed += r.passed
        self.answered += r.answered
        self.deflected += r.deflected
        self.fallback += r.source == "fallback"
        self.guard_acted += bool(r.guard)
        if r.adversarial:
            self.adversarial += 1
            self.adversarial_passed += r.passed
        if r.kind == "single":
            self.singles += 1
            self.singles_passed += r.passed
        else:
            self.conversation += 1
            self.conversation_passed += r.passed
        for check in dict.fromkeys(f.check for f in r.findings):
            self.failures[check] += 1

    @property
    def pass_rate(self) -> float | None:
        return self.passed / self.replies if self.replies else None

    @property
    def answered_rate(self) -> float | None:
        return self.answered / self.replies if self.replies else None

    @property
    def adversarial_rate(self) -> float | None:
        return self.adversarial_passed / self.adversarial if self.adversarial else None

    @property
    def ordinary_rate(self) -> float | None:
        n = self.replies - self.adversarial
        return (self.passed - self.adversarial_passed) / n if n else None

    def check_rate(self, check: str) -> float | None:
        return 1 - self.failures[check] / self.replies if self.replies else None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["failures"] = dict(self.failures.most_common())
        d.update(pass_rate=_r(self.pass_rate), answered_rate=_r(self.answered_rate),
                 adversarial_rate=_r(self.adversarial_rate),
                 ordinary_rate=_r(self.ordinary_rate))
        return d


@dataclass
class ConversationSummary:
    id: str
    character: str
    turns: int
    passed: int
    loops: int  # turns with a loop
    repeats: int  # turns that repeat an earlier reply
    scripted: int


@dataclass
class Summary:
    by_character: dict[str, Tally]
    all: Tally
    by_category: dict[str, Tally]
    conversations: list[ConversationSummary]
    checks: list[str]  # every check that failed somewhere, most failures first

    @property
    def conversations_clean(self) -> bool:
        return all(c.loops == 0 and c.repeats == 0 for c in self.conversations)


def summarise(results: Sequence[TurnResult]) -> Summary:
    by_char: dict[str, Tally] = {}
    by_cat: dict[str, Tally] = {}
    total = Tally()
    for r in results:
        by_char.setdefault(r.character, Tally()).add(r)
        by_cat.setdefault(r.category, Tally()).add(r)
        total.add(r)
    convs: dict[str, ConversationSummary] = {}
    for r in results:
        if r.kind != "conversation":
            continue
        c = convs.setdefault(r.item, ConversationSummary(r.item, r.character, 0, 0, 0, 0, 0))
        c.turns += 1
        if not r.scored:
            c.scripted += 1
            continue
        checks = {f.check for f in r.findings}
        c.passed += r.passed
        c.loops += bool(checks & LOOP_CHECKS)
        c.repeats += bool(checks & REPEAT_CHECKS)
    return Summary(by_char, total, by_cat, list(convs.values()), [c for c, _ in total.failures.most_common()])


# --------------------------------------------------------------------------- JSON


def run_to_json(run: EvalRun) -> dict[str, Any]:
    s = summarise(run.results)
    return {
        "info": dataclasses.asdict(run.info),
        "summary": {
            "all": s.all.to_dict(),
            "by_character": {k: v.to_dict() for k, v in s.by_character.items()},
            "by_category": {k: v.to_dict() for k, v in s.by_category.items()},
            "conversations": [dataclasses.asdict(c) for c in s.conversations],
            "conversations_clean": s.conversations_clean,
        },
        "results": [_result_dict(r) for r in run.results],
    }


def _result_dict(r: TurnResult) -> dict[str, Any]:
    d = dataclasses.asdict(r)
    d["passed"] = r.passed
    d["scored"] = r.scored
    return d


def run_from_json(data: dict[str, Any]) -> EvalRun:
    """An ``EvalRun`` back from ``run_to_json``'s output (for ``--compare``)."""
    results = []
    fields = {f.name for f in dataclasses.fields(TurnResult)}
    for d in data["results"]:
        kw = {k: v for k, v in d.items() if k in fields}
        kw["findings"] = [Failure(**f) for f in d.get("findings", [])]
        results.append(TurnResult(**kw))
    info_fields = {f.name for f in dataclasses.fields(RunInfo)}
    return EvalRun(RunInfo(**{k: v for k, v in data["info"].items() if k in info_fields}), results)


def write_run(run: EvalRun, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / "report.md", out_dir / "report.json"
    md.write_text(run_markdown(run), encoding="utf-8")
    js.write_text(json.dumps(run_to_json(run), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return md, js


# --------------------------------------------------------------------------- markdown


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _frac(passed: int, n: int) -> str:
    return "-" if not n else f"{_pct(passed / n)} ({passed}/{n})"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def run_title(info: RunInfo) -> str:
    return f"{info.model} ({info.model_name}), guard {'on' if info.guard else 'off'}, seed {info.seed}"


def run_markdown(run: EvalRun) -> str:
    s = summarise(run.results)
    info = run.info
    out = [
        f"# npc-engine eval: {run_title(info)}",
        "",
        f"{s.all.replies} replies scored ({s.all.singles} single lines, {s.all.conversation} conversation turns; "
        f"{s.all.scripted} scripted story lines not scored), sampling "
        f"{', '.join(f'{k} {v:g}' for k, v in info.sampling.items()) or f'temperature {info.temperature}'}, "
        f"lines from `{info.lines_file}`, started {info.started}, took {info.wall_s:.0f} s.",
        "",
        "## Pass rate per character",
        "",
        "*pass*: no check found anything in the reply the player got. *answered*: passed in the model's "
        "own words, not replaced by a written deflection or fallback line (with the guard on, *pass* "
        "counts the guard's deflections, which the checks never flag; *answered* does not). "
        "*guard acted*: replies the guard changed; *deflected*: replies it replaced.",
        "",
        "| character | pass | answered | adversarial | ordinary | single lines | conversation turns "
        "| guard acted | deflected |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for cid, t in [*sorted(s.by_character.items()), ("**all**", s.all)]:
        out.append(
            f"| {cid} | {_frac(t.passed, t.replies)} | {_frac(t.answered, t.replies)} | "
            f"{_frac(t.adversarial_passed, t.adversarial)} | "
            f"{_frac(t.passed - t.adversarial_passed, t.replies - t.adversarial)} | "
            f"{_frac(t.singles_passed, t.singles)} | {_frac(t.conversation_passed, t.conversation)} | "
            f"{t.guard_acted} | {t.deflected} |"
        )
    chars = sorted(s.by_character)
    out += ["", "## Pass rate per check", "",
            "A reply fails a check when the check found something in it (replies failing it in brackets).", "",
            "| check | " + " | ".join(chars) + " | all |", "|---" * (len(chars) + 2) + "|"]
    for check in s.checks:
        cells = [f"{_pct(s.by_character[c].check_rate(check))} ({s.by_character[c].failures[check]})" for c in chars]
        out.append(f"| {check} | " + " | ".join(cells) + f" | {_pct(s.all.check_rate(check))} ({s.all.failures[check]}) |")
    if not s.checks:
        out.append("| (none failed) |" + " |" * (len(chars) + 1))
    out += ["", "## Pass rate per category", "", "| category | replies | pass | most failed checks |", "|---|---|---|---|"]
    for cat, t in sorted(s.by_category.items(), key=lambda kv: (kv[1].pass_rate or 0, kv[0])):
        top = ", ".join(f"{c} ({n})" for c, n in t.failures.most_common(3))
        out.append(f"| {cat} | {t.replies} | {_frac(t.passed, t.replies)} | {top} |")
    if s.conversations:
        out += ["", "## Conversations", "", "| conversation | character | turns | pass | loops | repeated replies |",
                "|---|---|---|---|---|---|"]
        for c in s.conversations:
            scored = c.turns - c.scripted
            out.append(f"| {c.id} | {c.character} | {c.turns} | {_frac(c.passed, scored)} | {c.loops} | {c.repeats} |")
    out += ["", "## Failing replies", ""]
    failing = [r for r in run.results if r.scored and not r.passed]
    if not failing:
        out.append("None.")
    for cid in chars:
        mine = [r for r in failing if r.character == cid]
        if mine:
            out += [f"### {cid} ({len(mine)})", ""]
            out += [_failure_line(r) for r in mine]
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def _failure_line(r: TurnResult) -> str:
    where = r.item if r.kind == "single" else f"{r.item} turn {r.turn}"
    checks = "; ".join(f"**{f.check}**: {f.detail}" for f in r.findings)
    line = f"- `{where}` ({r.category}) \"{_cell(r.player)}\" → \"{_cell(r.reply)}\" — {checks}"
    if r.raw and r.raw != r.reply and r.guard:
        line += f" (model wrote: \"{_cell(r.raw)}\")"
    return line


def common_items(runs: Sequence[EvalRun]) -> list[EvalRun]:
    """Each run cut to the turns every run has (the same line to the same character, the same
    conversation turn): runs of different subsets compared on equal terms."""
    def key(r: TurnResult) -> tuple[str, str, str, int]:
        return (r.kind, r.character, r.item, r.turn)

    shared = set.intersection(*({key(r) for r in run.results} for run in runs)) if runs else set()
    return [EvalRun(run.info, [r for r in run.results if key(r) in shared]) for run in runs]


def compare_markdown(runs: Iterable[EvalRun], labels: Sequence[str] | None = None) -> str:
    """Several runs side by side: one row per character x model (and guard). ``labels`` name
    the runs in the model column (default: the model each ran)."""
    rows = ["| model | guard | character | replies | pass | answered | adversarial | ordinary | deflected "
            "| loops | repeated replies |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    checks_rows: list[str] = []
    all_runs = list(runs)
    all_checks: list[str] = []
    for run in all_runs:
        for c in summarise(run.results).checks:
            if c not in all_checks:
                all_checks.append(c)
    checks_rows = ["| model | guard | " + " | ".join(all_checks) + " |", "|---|---" + "|---" * len(all_checks) + "|"]
    names = list(labels) if labels is not None else [run.info.model for run in all_runs]
    for name, run in zip(names, all_runs, strict=True):
        s = summarise(run.results)
        guard = "on" if run.info.guard else "off"
        for cid, t in [*sorted(s.by_character.items()), ("**all**", s.all)]:
            convs = [c for c in s.conversations if cid == "**all**" or c.character == cid]
            rows.append(
                f"| {name} | {guard} | {cid} | {t.replies} | {_frac(t.passed, t.replies)} | "
                f"{_frac(t.answered, t.replies)} | {_frac(t.adversarial_passed, t.adversarial)} | "
                f"{_frac(t.passed - t.adversarial_passed, t.replies - t.adversarial)} | {t.deflected} | "
                f"{sum(c.loops for c in convs)} | {sum(c.repeats for c in convs)} |"
            )
        checks_rows.append(f"| {name} | {guard} | " + " | ".join(
            f"{_pct(s.all.check_rate(c))} ({s.all.failures[c]})" for c in all_checks) + " |")
    return "\n".join(["## Pass rate per character x model", "", *rows, "",
                      "## Pass rate per check (all characters)", "", *checks_rows]) + "\n"
