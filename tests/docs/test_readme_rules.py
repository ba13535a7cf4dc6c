"""The README test's rules (readme_blocks.py), tested on small documents, and README.md keeping them."""

from __future__ import annotations

from pathlib import Path

import pytest
from docs.readme_blocks import ReadmeError, expected_pattern, load, matches, parse, substitute_address

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.parametrize("shown,real,ok", [
    ('{"a":1,"b":"x y"}', '{"a": 1, "b": "x y"}\n', True),              # whitespace does not count
    ('{"a":1}', '{"a":2}', False),                                       # integers are exact
    ('{"a":1}', '{"a":1,"b":2}', False),                                 # nothing more without an ellipsis
    ('{"e":[0.0750,0.0339, ...]}', '{"e":[0.07501715,0.03395,-0.1,0.2]}', True),
    ('{"e":[0.0750, ...]}', '{"e":[0.0770,0.1]}', False),                # off by more than one unit of the last digit
    ('{"e":[0.07501715,-0.03717222]}', '{"e":[0.07501718,-0.03717234]}', True),  # another CPU's float32
    ('{"e":[0.07501715]}', '{"e":[0.07503]}', False),                   # more than 0.01 % off
    ('{"s":0.99}', '{"s":0.9812}', True),
    ('{"s":0.99}', '{"s":0.97}', False),
    ('{"t":"Knead the dough, ..."}', '{"t":"Knead the dough, let it rise."}', True),
    ('...{"id":"x"}...', 'noise {"id":"x"} more', True),
    ('...{"id":"x"}...', 'noise {"id":"y"} more', False),
    ("384\n{'state': 'fully_allocated'}", "384\n{'state': 'fully_allocated'}\n", True),
    ("384", "385", False),
])
def test_matching_shown_output(shown, real, ok):
    assert matches(shown, real) is ok


DOC = """
Intro.

```bash
curl -X PUT 'http://127.0.0.1:9200/_inference/x'
```

```json
{"ok": true}
```

Text between.

```text
not an output: a paragraph came first
```

<!-- readme-test: skip -->

*Not run by the README test: needs a cluster.*

```bash
kubectl apply -f x.yaml
```

```bash
curl localhost:9200/a
# {"a": 1,
#  "b": 2}
curl localhost:9200/b
```

```python
print(1)
```
"""


def test_blocks_outputs_and_skips():
    blocks = parse(DOC)
    assert [(b.lang, b.runs) for b in blocks] == [("bash", True), ("bash", False), ("bash", True), ("python", True)]
    assert blocks[0].expected == ['{"ok": true}\n']
    assert blocks[1].skip_reason == "needs a cluster."
    assert blocks[2].expected == ['{"a": 1,\n  "b": 2}']
    assert expected_pattern(blocks[2]).startswith("...\n") and matches(expected_pattern(blocks[2]),
                                                                        'x{"a":1,"b":2}y')
    assert substitute_address(blocks[2].code, "127.0.0.1:5555").count("127.0.0.1:5555") == 2


@pytest.mark.parametrize("doc,message", [
    ("<!-- readme-test: skip -->\n\n```bash\nx\n```\n", "needs a visible line"),
    ("Some text.\n\n<!-- readme-test: skip -->\n\n```bash\nx\n```\n", "needs a visible line"),
    ("*Not run by the README test: why*\n\n<!-- readme-test: skip -->\n\n```yaml\nx: 1\n```\n", "never runs"),
    ("<!-- readme-test: skipp -->\n\n```bash\nx\n```\n", "unknown marker"),
    ("text\n\n<!-- readme-test: skip -->\n", "applies to nothing"),
])
def test_a_skip_must_be_visible_and_apply_to_a_block(doc, message):
    with pytest.raises(ReadmeError, match=message):
        parse(doc)


def test_readme_keeps_the_rules():
    blocks = load(README)  # raises on a hidden or misplaced skip
    run = [b for b in blocks if b.runs]
    assert len(run) >= 8 and any(b.lang == "python" for b in run)
    assert all("Kubernetes" in b.skip_reason or "cluster" in b.skip_reason or "hub" in b.skip_reason
               or "docker" in b.skip_reason or "test" in b.skip_reason or "folders" in b.skip_reason
               for b in blocks if not b.runs)
    # The quick start's examples show what they print.
    assert sum(1 for b in run if b.expected) >= 4


def test_every_block_parses_even_those_not_run():
    import subprocess

    for block in load(README):
        if block.lang == "python":
            compile(block.code, f"README.md:{block.line}", "exec")
        else:
            proc = subprocess.run(["bash", "-n"], input=block.code, capture_output=True, text=True)
            assert proc.returncode == 0, f"README.md line {block.line}: {proc.stderr}"


def test_digits_inside_words_are_not_numbers():
    # A hex id such as a Cohere response id: "8e400f" is not 8 x 10^400.
    assert matches('{"id":...,"n":1}', '{"id":"8e400f1a-2b","n":1}')
    assert not matches('{"id":"8e400f"}', '{"id":"8e400e"}')
    assert matches('{"x":1e-3}', '{"x":0.001}')
