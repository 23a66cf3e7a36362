"""Every ```python example of docs/extending.md and of README.md's "From Python" section runs
as written, in a scratch folder, with `fedmeta.run` given a few rounds on a few clients."""

import re
from pathlib import Path

import pytest

import fedmeta

ROOT = Path(__file__).resolve().parents[2]
SMALL = {  # on top of each example's own overrides: seconds, not minutes
    "federated.rounds": 2,
    "federated.eval_every": 1,
    "federated.n_clients": 8,
    "federated.held_out_clients": 3,
    "federated.clients_per_round": 3,
    "federated.clients.local_steps": 1,
    "federated.clients.tasks_per_step": 2,
    "meta.eval_inner_steps": 2,
}


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def readme_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## From Python\n")
    return text[start:text.index("\n## ", start + 1)]


EXAMPLES = {"docs/extending.md": (ROOT / "docs" / "extending.md").read_text(), "README.md#from-python": readme_section()}


@pytest.mark.parametrize("where", list(EXAMPLES))
def test_examples_run(where, tmp_path, monkeypatch, capsys):
    blocks = python_blocks(EXAMPLES[where])
    assert blocks, f"no python examples in {where}"
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    real, calls = fedmeta.run, []

    def small_run(config, *, overrides=None, **kwargs):
        calls.append(kwargs)
        return real(config, overrides={**(overrides or {}), **SMALL}, **kwargs)

    monkeypatch.setattr(fedmeta, "run", small_run)
    namespace = {"__name__": "__main__"}  # one session per page: later examples may use earlier names
    for number, block in enumerate(blocks, 1):
        try:
            exec(compile(block, f"{where} example {number}", "exec"), namespace)
        except Exception as err:
            raise AssertionError(f"{where}, example {number} failed: {type(err).__name__}: {err}\n{block}") from err
    assert calls, f"the examples of {where} never called fedmeta.run"
    printed = capsys.readouterr().out
    if where == "docs/extending.md":  # what the comments say is printed
        assert "meta.inner_stepz = 2: unknown key; did you mean meta.inner_steps?" in printed
        assert "{'model': '__main__.small_net'}" in printed
        assert "[{'name': 'sign_quantize', 'step': '__main__.ClipToSign'}]" in printed
        assert (tmp_path / "runs" / "quick" / "report.html").is_file()
    else:
        assert (tmp_path / "sinusoid.html").is_file()
