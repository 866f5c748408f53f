"""docs/api.md runs as written: its Python blocks, in order, as one script."""
import pathlib
import re

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "api.md"


def test_api_doc_runs_as_written(capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) >= 8
    namespace = {}
    exec(compile("\n".join(blocks), str(DOC), "exec"), namespace)
    report = namespace["report"]
    assert set(report.accuracy) == {1, 2, 4, 8} and 0 <= report.ann_accuracy <= 1
    assert namespace["choice"].spike_levels is not None
    assert "improved K=3" in capsys.readouterr().out
