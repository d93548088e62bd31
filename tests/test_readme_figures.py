"""README.md quotes the figures of `fpgm-ext demo` from bench/RESULTS.md's "demo" section, both
written by `python -m bench.demo --write`. The quoted table and summary must be the section's,
and the summary's numbers those of the section's per-seed table, so that neither file can be
edited, or go stale, without the other. Text is compared; nothing is measured again."""
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import demo as bench_demo  # noqa: E402
from fpgm_ext.demo import DemoResult, Figures, Settings  # noqa: E402

BEGIN, END = "<!-- demo:begin -->", "<!-- demo:end -->"
SUMMARY_START = "Measured by `python -m bench.demo --write`"


@dataclass
class SeedRow:
    """The figures of one row of the section's per-seed table that the summary quotes."""
    seed: int
    before: int     # test images classified right before pruning
    after: int      # ... and after pruning and fine-tuning
    after_text: str  # "98.89 % (356/360)"
    images: int
    seconds: int


# ----------------------------------------------------------------------------- reading
def block(text: str) -> str:
    """The text between the demo markers."""
    assert BEGIN in text and END in text, "no demo block"
    return text[text.index(BEGIN) + len(BEGIN): text.index(END)]


def first_table(text: str) -> List[str]:
    """The lines of the first Markdown table in ``text``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


def after_heading(text: str, heading: str) -> str:
    return text[text.index(heading):]


def summary(text: str) -> str:
    """The paragraph that starts with SUMMARY_START."""
    return next(p.strip() for p in text.split("\n\n") if p.strip().startswith(SUMMARY_START))


def seed_rows(section: str) -> List[SeedRow]:
    rows = []
    for line in first_table(after_heading(section, "### Every seed"))[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        (before, images), (after, _) = (re.search(r"\((\d+)/(\d+)\)", c).groups() for c in cells[1:3])
        seconds = re.fullmatch(r"(\d+) s", cells[-1]).group(1)
        rows.append(SeedRow(int(cells[0]), int(before), int(after), cells[2], int(images), int(seconds)))
    return rows


def span(values: List[int]) -> str:
    return str(values[0]) if min(values) == max(values) else f"{min(values)}-{max(values)}"


# ----------------------------------------------------------------------------- checking
def disagreements(readme: str, results: str) -> List[str]:
    """What README.md's demo block says that bench/RESULTS.md's demo section does not."""
    quoted, section = block(readme), block(results)
    problems = []
    table = first_table(after_heading(section, "### Seed"))
    if first_table(quoted) != table:
        problems.append("README's demo table is not the RESULTS.md section's default-seed table")
    if summary(quoted) != summary(section):
        problems.append("README's demo summary is not the RESULTS.md section's")
    rows = seed_rows(section)
    head = next(r for r in rows if f"### Seed {r.seed}," in section)
    n = head.images
    expected = [f"accuracy after pruning {head.after_text}.",
                f"Over seeds {', '.join(str(r.seed) for r in rows)} ",
                f"classified right {span([r.before for r in rows])}/{n} before pruning",
                f"and {span([r.after for r in rows])}/{n} after",
                f"was {head.seconds} s with seed {head.seed}, {span([r.seconds for r in rows])} s over"]
    problems += [f"the summary does not say '{e}' (the per-seed table)" for e in expected
                 if e not in summary(section)]
    accuracy_row = next(line for line in table if line.startswith("| test accuracy |"))
    if f"| {head.after_text} |" not in accuracy_row:
        problems.append(f"the default-seed table's accuracy is not seed {head.seed}'s row's")
    return problems


def test_readme_quotes_the_demo_section_of_results():
    readme = (ROOT / "README.md").read_text()
    results = (ROOT / "bench" / "RESULTS.md").read_text()
    assert disagreements(readme, results) == []


# ----------------------------------------------------------------------------- the check itself
def fake_result(seed: int, before: int, after: int, seconds: float) -> DemoResult:
    """A demo result with made-up figures (no training)."""
    def figures(correct, params, flops, ms):
        return Figures(accuracy=100.0 * correct / 360, params=params, flops=flops,
                       latency_1_ms=ms, latency_test_ms=12 * ms, correct=correct)
    return DemoResult(settings=asdict(Settings(seed=seed)), before=figures(before, 269434, 5033216, 0.8),
                      after=figures(after, 102003, 1940820, 0.7), masked_accuracy=97.5,
                      pruned_accuracy=97.5, max_abs_diff=0.0, channels={"1.conv1": "16 -> 10"},
                      seconds=seconds, threads=2, test_images=360)


@pytest.fixture
def written(tmp_path):
    """README.md and RESULTS.md as `python -m bench.demo --write` leaves them, made-up figures."""
    results = [fake_result(0, 359, 356, 71.2), fake_result(1, 360, 358, 70.4),
               fake_result(2, 357, 355, 78.0)]
    machine = bench_demo.Machine("AMD EPYC", 2, 2, "2026-12-02 10:00 UTC")
    readme, results_md = tmp_path / "README.md", tmp_path / "RESULTS.md"
    readme.write_text(f"# fpgm_ext\n\nintro\n\n{BEGIN}\n{END}\n\n## Command line\n")
    results_md.write_text("# results\n\n<!-- zoo:begin -->\nzoo\n<!-- zoo:end -->\n")
    bench_demo.write(results, machine, results_md, readme)
    return readme.read_text(), results_md.read_text()


def test_write_leaves_files_that_agree(written):
    readme, results = written
    assert disagreements(readme, results) == []
    assert readme.startswith("# fpgm_ext\n\nintro\n\n") and readme.endswith("\n\n## Command line\n")
    assert "<!-- zoo:begin -->\nzoo\n<!-- zoo:end -->" in results
    assert "98.89 % (356/360)" in block(readme) and "355-358/360 after" in block(readme)
    assert "was 71 s with seed 0, 70-78 s over the seeds" in block(readme)


@pytest.mark.parametrize("file, old, new", [
    ("readme", "| 102,003 |", "| 102,004 |"),                      # a table figure
    ("readme", "355-358/360 after", "355-359/360 after"),          # the spread
    ("readme", "was 71 s", "was 59 s"),                            # the time
    ("results", "| 2 | 99.17 % (357/360) | 98.61 % (355/360)",     # a seed's row only
     "| 2 | 99.17 % (357/360) | 98.33 % (354/360)"),
])
def test_an_edited_figure_is_caught(written, file, old, new):
    readme, results = written
    text = readme if file == "readme" else results
    assert old in text
    edited = text.replace(old, new)
    readme, results = (edited, results) if file == "readme" else (readme, edited)
    assert disagreements(readme, results)


def test_write_needs_the_readme_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    with pytest.raises(SystemExit, match="no <!-- demo:begin -->"):
        bench_demo.write([fake_result(0, 359, 356, 71.0)], bench_demo.Machine("x", 2, 2, "d"),
                         tmp_path / "RESULTS.md", readme)
    assert readme.read_text() == "# no markers\n" and not (tmp_path / "RESULTS.md").exists()


def test_a_quick_run_writes_files_that_agree(tmp_path):
    """The demo's real results (quick settings, one seed: seconds) through the same writer."""
    readme, results_md = tmp_path / "README.md", tmp_path / "RESULTS.md"
    readme.write_text(f"{BEGIN}\n{END}\n")
    results = bench_demo.run_seeds([0], quick=True)
    bench_demo.write(results, bench_demo.Machine.here(), results_md, readme)
    assert disagreements(readme.read_text(), results_md.read_text()) == []
