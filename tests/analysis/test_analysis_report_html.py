"""The HTML report is rendered from the template shipped in the analysis package: it prints text that came from
users (input names, exclusion reasons, case names) as text, and it renders from a plain Python process without
Django, as a notebook would."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from analysis import stats
from analysis.frames import answers_from_records
from analysis.report import build_document, render_html
from analysis.simulate import Profile, simulate_answers

ROOT = Path(__file__).resolve().parents[2]
FIGURES = ("realness_by_source", "accuracy_by_source_condition", "accuracy_change_by_case", "confidence_accuracy")
SCRIPT = '<script>alert("report")</script>'
IMAGE = "<img src=x onerror=alert(1)>"


def test_user_supplied_text_is_printed_as_text_not_markup():
    answers = answers_from_records(simulate_answers(Profile(), 6, seed=1, n_block1=6, n_block2=4).to_dict("records"))
    results, _ = stats.analyse(answers, fit_models=False)
    exclusions = [{"participant": f'p"><b>{SCRIPT}', "status": "excluded", "reason": f"said {IMAGE} & left"}]
    document = build_document(results, 6, exclusions, {"input": f"study {SCRIPT}"})
    document["block2"]["correction_rate_excluding_top_case"]["proposed"]["excluded_case"] = IMAGE
    document["block1"]["realness_ttest"]["proposed_vs_baseline"]["note"] = SCRIPT

    page = render_html(document, dict.fromkeys(FIGURES, b"\x89PNG"))

    assert "<script" not in page and "<b>" not in page and "onerror=alert(1)>" not in page
    assert page.count("<img ") == len(FIGURES)
    assert "Input: study &lt;script&gt;alert(&#34;report&#34;)&lt;/script&gt;." in page
    assert "<td>p&#34;&gt;&lt;b&gt;&lt;script&gt;" in page
    assert "<td>said &lt;img src=x onerror=alert(1)&gt; &amp; left</td>" in page
    assert page.count("&lt;img src=x onerror=alert(1)&gt;") == 2
    # the report's own markup is untouched by the escaping
    assert "d<sub>z</sub> = " in page and '<p class="readers-warning">' not in page


def test_the_report_renders_in_a_python_process_without_django(tmp_path):
    notebook = textwrap.dedent(
        """
        import sys
        from analysis.frames import answers_from_records
        from analysis.report import analyse_answers, write_report
        from analysis.simulate import Profile, simulate_answers

        table = simulate_answers(Profile(), 6, seed=2, n_block1=6, n_block2=4)
        answers = answers_from_records(table.to_dict("records"))
        document, tables = analyse_answers(answers, fit_models=False, readers="simulated")
        written = write_report(document, tables, "out", formats=("html",))
        print(sorted(path.name for path in written))
        print("django loaded:", any(name.split(".")[0] == "django" for name in sys.modules))
        """
    )
    environment = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    environment["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-c", notebook], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "report.html" in done.stdout and "django loaded: False" in done.stdout
    page = (tmp_path / "out" / "report.html").read_text()
    assert "<title>Reader study analysis (simulated data)</title>" in page and "<h2>Multiple comparisons</h2>" in page
