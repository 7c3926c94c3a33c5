"""README.md tells the truth about the code: commands, options, paths, settings, formats.

Each test reads what README.md names (in code blocks and inline code) and checks it against
the code: the click command tree of ``appliance``, the scripts' argparse options, the settings
models of ``appliance.config``, the exit codes of ``appliance.errors``, the JSON records, the
files in the repository. Nothing loads a model, so the whole file takes about a second.
"""

from __future__ import annotations

import ast
import dataclasses
import fnmatch
import inspect
import json
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from pydantic import BaseModel

from appliance.cli import cli
from appliance.config import IngestSettings, Settings, data_dir, load_settings
from tests.fakes import FakeGenerator

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")

# -- reading the README ---------------------------------------------------------------------------

_FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", re.M | re.S)


def code_blocks() -> list[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    return [(m.group(1).strip(), m.group(2)) for m in _FENCE.finditer(README)]


def _prose() -> str:
    return _FENCE.sub("", README)


def inline_spans(text: str | None = None) -> list[str]:
    """Every inline code span, whitespace (line breaks included) collapsed, and a table's
    escaped ``\\|`` read as ``|``."""
    text = _prose() if text is None else text
    return [" ".join(m.group(1).replace("\\|", "|").split())
            for m in re.finditer(r"`([^`]+)`", text)]


def segments() -> list[str]:
    """Command-like text: inline spans and the logical lines of code blocks."""
    lines = []
    for _, body in code_blocks():
        lines += [" ".join(line.split()) for line in body.replace("\\\n", " ").splitlines()]
    return [s for s in inline_spans() + lines if s]


def section(title: str) -> str:
    """The text of the README section whose heading is ``title`` (up to the next heading
    of the same or a higher level)."""
    m = re.search(rf"^(#+) {re.escape(title)}\n", README, re.M)
    assert m, f"README has no section '{title}'"
    level = len(m.group(1))
    end = re.search(rf"^#{{1,{level}}} ", README[m.end():], re.M)
    return README[m.end(): m.end() + end.start()] if end else README[m.end():]


def bullet(title: str) -> str:
    """The text of the list item that starts with ``- **title**``."""
    m = re.search(rf"^- \*\*{re.escape(title)}\*\*(.*?)(?=^- |^#|\Z)", README, re.M | re.S)
    assert m, f"README has no bullet '{title}'"
    return m.group(1)


def tokens(text: str) -> list[str]:
    """Shell words of ``text`` (a ``#`` comment dropped); plain words when quoting is off."""
    try:
        return shlex.split(text, comments=True)
    except ValueError:
        return text.split()


def _clean(token: str) -> str:
    return token.strip("[](),.;:")


def _is_option(token: str) -> bool:
    return re.fullmatch(r"--?[a-z][\w-]*(=.*)?", _clean(token)) is not None


def _option_name(token: str) -> str:
    return _clean(token).split("=", 1)[0]


# -- the command tree -------------------------------------------------------------------------


def _options(cmd: click.Command) -> dict[str, click.Parameter | None]:
    """The options ``cmd`` takes, by name (``-h`` and ``--help`` too: every command has them)."""
    found: dict[str, click.Parameter | None] = {"-h": None, "--help": None}
    for param in cmd.params:
        if isinstance(param, click.Option):
            for name in (*param.opts, *param.secondary_opts):
                found[name] = param
    return found


def command_paths(group: click.Group = cli, path: tuple[str, ...] = ()
                  ) -> Iterator[tuple[str, ...]]:
    """Every command path of the CLI, groups included."""
    for name, cmd in group.commands.items():
        yield (*path, name)
        if isinstance(cmd, click.Group):
            yield from command_paths(cmd, (*path, name))


_JOINERS = {"or", "and", "then", "with"}
"""Prose words that can follow a bare `appliance` in inline code (`appliance` or ...)."""


@dataclasses.dataclass
class Usage:
    """One `appliance ...` in the README, as understood against the command tree."""

    text: str
    path: tuple[str, ...] = ()
    problems: list[str] = dataclasses.field(default_factory=list)
    seen: set[tuple[str, ...]] = dataclasses.field(default_factory=set)


def parse_usage(words: list[str], text: str) -> Usage:
    """Walk ``words`` (what follows `appliance`) down the command tree: subcommands must
    exist, options must belong to the command reached, a choice's values must be choices.
    ``a | b`` after a subcommand names its sibling ``b`` (`kb list | stats`)."""
    usage = Usage(text)
    cmd: click.Command = cli
    parent: click.Group | None = None
    i = 0
    while i < len(words):
        word = words[i]
        if word == "appliance" or word.startswith(("#", "&&", ";", ">")):
            break
        if word == "|":
            nxt = _clean(words[i + 1]) if i + 1 < len(words) else ""
            if parent is not None and nxt in parent.commands:
                cmd = parent.commands[nxt]
                usage.path = (*usage.path[:-1], nxt)
                usage.seen.add(usage.path)
                i += 2
                continue
            break
        if _is_option(word):
            name = _option_name(word)
            opts = _options(cmd)
            param = opts.get(name)
            if name not in opts:
                usage.problems.append(f"'{' '.join(('appliance', *usage.path))}' has no option "
                                      f"{name}")
            elif isinstance(param, click.Option) and isinstance(param.type, click.Choice):
                value = _clean(words[i + 1]) if i + 1 < len(words) else ""
                if re.fullmatch(r"[a-z0-9._]+(\|[a-z0-9._]+)*", value):
                    wrong = [v for v in value.split("|") if v not in param.type.choices]
                    if wrong:
                        usage.problems.append(f"{name} of '{' '.join(usage.path)}' takes "
                                              f"{list(param.type.choices)}, not {wrong}")
                    i += 1
            i += 1
            continue
        if isinstance(cmd, click.Group):
            name = _clean(word)
            if name in cmd.commands:
                parent, cmd = cmd, cmd.commands[name]
                usage.path = (*usage.path, name)
                usage.seen.add(usage.path)
            elif (not usage.path and name in _JOINERS) or re.fullmatch(r"[A-Z_.]+", name):
                break  # prose (`appliance` or ...), a placeholder (`appliance COMMAND --help`)
            else:
                usage.problems.append(f"'{' '.join(('appliance', *usage.path))}' has no "
                                      f"command '{name}'")
                break
        i += 1
    return usage


def readme_usages() -> list[Usage]:
    """Every `appliance ...` in README code, and inline code that starts with a command
    name and an option or subcommand (`ingest --json`, `kb reembed`)."""
    usages = []
    for seg in segments():
        words = tokens(seg)
        starts = [i for i, w in enumerate(words)
                  if w == "appliance" or w.endswith("/bin/appliance")]
        for start in starts:
            usages.append(parse_usage(words[start + 1:], seg))
        if not starts and len(words) >= 2 and words[0] in cli.commands:
            sub = cli.commands[words[0]]
            if _is_option(words[1]) or (isinstance(sub, click.Group)
                                        and _clean(words[1]) in sub.commands):
                usages.append(parse_usage(words, seg))
    return usages


def test_readme_commands_and_options_exist_in_the_cli() -> None:
    usages = readme_usages()
    assert len(usages) > 30, "README's commands were not found; did the parsing break?"
    problems = [f"{p}  (in `{u.text}`)" for u in usages for p in u.problems]
    assert not problems, "README names what the CLI lacks:\n" + "\n".join(problems)


def test_every_cli_command_is_in_the_readme() -> None:
    seen: set[tuple[str, ...]] = set()
    for usage in readme_usages():
        seen |= usage.seen
    missing = [" ".join(p) for p in command_paths() if p not in seen]
    assert not missing, f"README never shows `appliance {missing[0]}` (all missing: {missing})"


def _all_cli_options() -> set[str]:
    found: set[str] = set()

    def walk(cmd: click.Command) -> None:
        found.update(_options(cmd))
        if isinstance(cmd, click.Group):
            for sub in cmd.commands.values():
                walk(sub)

    walk(cli)
    return found


# -- scripts ----------------------------------------------------------------------------------


def _script_file(name: str) -> Path | None:
    for folder in ("scripts", "packaging"):
        if (REPO / folder / name).is_file():
            return REPO / folder / name
    return None


def _argparse_options(path: Path) -> tuple[set[str], set[str]]:
    """(options, required options) a Python script's argparse parser declares, including
    those of the sibling scripts it imports (``abstention_signals`` uses ``calibrate_margin``'s
    ``dev_arguments``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    options: set[str] = set()
    required: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr == "add_argument":
            names = [a.value for a in node.args
                     if isinstance(a, ast.Constant) and isinstance(a.value, str)
                     and a.value.startswith("-")]
            options.update(names)
            if any(k.arg == "required" and isinstance(k.value, ast.Constant) and k.value.value
                   for k in node.keywords):
                required.update(n for n in names if n.startswith("--"))
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            sibling = path.parent / f"{node.module}.py"
            if sibling.is_file() and sibling != path:
                more, more_required = _argparse_options(sibling)
                options |= more
                required |= more_required
    return options | {"-h", "--help"}, required


def _shell_options(path: Path) -> set[str]:
    """Options a shell script's ``case`` arms accept (``--prefix) ...``, ``--prefix=*)``)."""
    text = path.read_text(encoding="utf-8")
    return set(re.findall(r"(--[a-z][\w-]*)(?:=\*)?\s*(?:\|[^)]*)?\)", text)) | {"-h", "--help"}


def script_options(path: Path) -> tuple[set[str], set[str]]:
    if path.suffix == ".py":
        return _argparse_options(path)
    return _shell_options(path), set()


_SCRIPT = re.compile(r"(?:^|/)([\w-]+\.(?:py|sh))$")


def script_usages() -> list[tuple[str, str, list[str]]]:
    """(segment, script name, the words after it) for every script the README names."""
    found = []
    for seg in segments():
        words = tokens(seg)
        for i, word in enumerate(words):
            m = _SCRIPT.search(_clean(word))
            if m and not word.startswith(("appliance/", "tests/")):
                rest = []
                for w in words[i + 1:]:
                    if w.startswith(("#", "&&", ";")) or w == "appliance":
                        break
                    rest.append(w)
                found.append((seg, m.group(1), rest))
    return found


def test_scripts_named_in_the_readme_exist_and_take_its_options() -> None:
    usages = script_usages()
    assert len(usages) > 10, "README's script commands were not found; did the parsing break?"
    problems = []
    for seg, name, rest in usages:
        path = _script_file(name)
        if path is None:
            problems.append(f"no script {name} in scripts/ or packaging/ (`{seg}`)")
            continue
        options, required = script_options(path)
        given = {_option_name(w) for w in rest if _is_option(w)}
        problems += [f"{name} has no option {o} (`{seg}`)" for o in sorted(given - options)]
        if given:  # an invocation, not a mention: it must run as written
            problems += [f"{name} requires {o}, missing in `{seg}`"
                         for o in sorted(required - given)]
    assert not problems, "\n".join(problems)


def test_bare_options_in_the_readme_exist_somewhere() -> None:
    """`--opt ...` spans (about a command named nearby) name an option of the CLI or a script."""
    known = _all_cli_options()
    for path in [*(REPO / "scripts").iterdir(), REPO / "packaging" / "install.sh"]:
        if path.suffix in (".py", ".sh"):
            known |= script_options(path)[0]
    bare = [s for s in inline_spans() if s.startswith("--")]
    assert bare, "README's option spans were not found"
    unknown = sorted({f"{_option_name(w)} (`{s}`)" for s in bare for w in tokens(s)
                      if _is_option(w) and _option_name(w) not in known})
    assert not unknown, "README names options nothing accepts: " + ", ".join(unknown)


# -- paths ------------------------------------------------------------------------------------

_TOP = ("appliance", "scripts", "tests", "models", "examples", "requirements", "packaging", ".ci")
GENERATED = {"models/built.toml": "appliance/train/packaged.py"}
"""Paths setup writes (not committed), and the module that writes each."""


def readme_paths() -> set[str]:
    words = [w for s in inline_spans() for w in s.split()]
    words += re.findall(r"\]\(([^)#]+)\)", README)  # link targets
    words += [w for _, body in code_blocks() for w in body.split()]
    found = set()
    for word in words:
        word = word.strip("()[],;:`\"'")
        if re.match(rf"(?:{'|'.join(map(re.escape, _TOP))})/", word) and not re.search(
                r"[<>{}$]", word):
            found.add(word.rstrip("."))
    return found


def test_repository_paths_in_the_readme_exist() -> None:
    paths = readme_paths()
    assert {"appliance/pipeline.py", "scripts/setup.sh"} <= paths, paths
    missing = []
    for rel in sorted(paths):
        if rel in GENERATED:
            assert rel in (REPO / GENERATED[rel]).read_text(encoding="utf-8"), rel
            continue
        if not any(REPO.glob(rel.rstrip("/"))):
            missing.append(rel)
    assert not missing, f"README names paths that do not exist: {missing}"


def test_python_names_in_the_readme_exist() -> None:
    """`Class.member` in inline code names a member of a class defined in appliance/."""
    members: dict[str, set[str]] = {}
    for path in (REPO / "appliance").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                names = members.setdefault(node.name, set())
                for item in node.body:
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                        names.add(item.name)
                    elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                        names.add(item.target.id)
    refs = {s for s in inline_spans() if re.fullmatch(r"[A-Z]\w+\.\w+", s)
            and s.split(".")[1] not in ("md", "py", "sh", "toml", "json", "jsonl", "txt")}
    assert refs, "README names no Class.member any more; drop this test or the parsing broke"
    wrong = sorted(r for r in refs if r.split(".")[1] not in members.get(r.split(".")[0], set()))
    assert not wrong, f"README names members that do not exist: {wrong}"


# -- settings ---------------------------------------------------------------------------------


def settings_sections() -> dict[str, type[BaseModel]]:
    found = {}
    for name, info in Settings.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            found[name] = info.annotation
    assert {"ingest", "retrieve", "answer", "generate"} <= set(found)
    return found


def test_environment_variables_in_the_readme_are_settings() -> None:
    sections = settings_sections()
    names = set(re.findall(r"APPLIANCE_[A-Z0-9_]*[A-Z0-9]", README))
    nested = {n for n in names if "__" in n}
    assert nested, "README names no APPLIANCE_<SECTION>__<FIELD> variable"
    wrong = []
    for name in sorted(nested):
        sec, _, field = name[len("APPLIANCE_"):].lower().partition("__")
        if sec not in sections or field not in sections[sec].model_fields:
            wrong.append(name)
    assert not wrong, f"README names settings that do not exist: {wrong}"
    sources = "\n".join(p.read_text(encoding="utf-8") for p in [
        *(REPO / "appliance").rglob("*.py"), *(REPO / "scripts").glob("*.py"),
        *(REPO / "scripts").glob("*.sh"), REPO / "packaging" / "install.sh"])
    unused = sorted(n for n in names - nested if n not in sources)
    assert not unused, f"README names variables nothing reads: {unused}"


def test_dotted_setting_names_in_the_readme_exist() -> None:
    sections = settings_sections()
    refs = {s for s in inline_spans()
            if re.fullmatch(r"[a-z]+\.[a-z_]+", s) and s.split(".")[0] in sections}
    assert len(refs) >= 3, refs
    wrong = sorted(r for r in refs
                   if r.split(".")[1] not in sections[r.split(".")[0]].model_fields)
    assert not wrong, f"README names settings that do not exist: {wrong}"


def test_config_toml_example_shows_the_defaults() -> None:
    blocks = [body for lang, body in code_blocks() if lang == "toml"]
    assert len(blocks) == 1, "README should show one config.toml example"
    example = tomllib.loads(blocks[0])
    sections = settings_sections()
    for sec, values in example.items():
        assert sec in sections, f"[{sec}] is not a settings section"
        defaults = sections[sec].model_validate({})
        for key, value in values.items():
            assert key in sections[sec].model_fields, f"{sec}.{key} is not a setting"
            assert getattr(defaults, key) == value, (
                f"README's config.toml shows {sec}.{key} = {value!r}, the default is "
                f"{getattr(defaults, key)!r}")


def test_default_data_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    m = re.search(r"\(`(~/[^`]+)` on Linux\)", README)
    assert m, "README no longer says where the data directory is on Linux"
    monkeypatch.delenv("APPLIANCE_HOME", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data_dir() == tmp_path / m.group(1)[2:]


# -- exit codes -------------------------------------------------------------------------------


def _exit_codes(text: str) -> dict[int, str]:
    """``{code: label}`` of a list such as "1 some items failed, 2 bad input; 3 ..."."""
    codes = {}
    for part in re.split(r"[;,]", text.replace("`", "")):
        m = re.match(r"\s*(\d+)\s+([^:(]+)", part)
        if m:
            codes[int(m.group(1))] = " ".join(m.group(2).split())
    return codes


def readme_exit_codes() -> dict[int, str]:
    m = re.search(r"non-zero exit code \((.*?)\)\.", README, re.S)
    assert m, "README's list of exit codes was not found"
    return _exit_codes(m.group(1))


def test_exit_codes_match_the_cli_help() -> None:
    help_text = " ".join((cli.help or "").split())
    m = re.search(r"Exit codes: (.*?) \(--debug", help_text)
    assert m, "`appliance --help` no longer lists the exit codes"
    assert readme_exit_codes() == _exit_codes(m.group(1))


def test_exit_codes_match_the_error_classes() -> None:
    from appliance import errors

    codes = {label: code for code, label in readme_exit_codes().items()}
    expected = {
        "bad input or settings": (errors.InputError, errors.ConfigError),
        "knowledge base": (errors.KnowledgeBaseError,),
        "nothing ingested": (errors.NothingIngestedError,),
        "model": (errors.ModelError,),
        "training or bundle": (errors.TrainingError, errors.BundleError),
        "a doctor check failed": (errors.DoctorError,),
        "interrupted": (errors.Interrupted,),
    }
    for label, classes in expected.items():
        assert label in codes, f"README lists no exit code for '{label}'"
        for cls in classes:
            assert cls.exit_code == codes[label], f"{cls.__name__}.exit_code is {cls.exit_code}"

    def subclasses(cls: type[errors.ApplianceError]) -> set[type[errors.ApplianceError]]:
        return {cls}.union(*(subclasses(c) for c in cls.__subclasses__()))

    unlisted = {c.exit_code for c in subclasses(errors.ApplianceError)} - set(codes.values())
    assert not unlisted, f"exit codes README does not list: {unlisted}"
    main_source = inspect.getsource(__import__("appliance.cli", fromlist=["main"]).main)
    assert f"sys.exit({codes['unexpected']})" in main_source
    assert f"sys.exit({codes['interrupted']})" in main_source


def test_ingest_exit_codes() -> None:
    m = re.search(r"`ingest --json` prints.*?(exit 0 .*?)\n\S*`search --json`", README, re.S)
    assert m, "README's ingest --json paragraph was not found"
    said = {int(c) for c in re.findall(r"(?:exit |,\s+)(\d) (?:when|with)", m.group(1))}
    assert said == {0, 1, 4}, said
    callback = cli.commands["ingest"].callback
    assert callback is not None
    source = inspect.getsource(callback)
    for code in said - {0}:
        assert f"sys.exit({code})" in source, code


# -- formats ----------------------------------------------------------------------------------


def _keys(data: Any) -> set[str]:
    """Every key of a JSON value, at any depth."""
    if isinstance(data, dict):
        return set(data).union(*(_keys(v) for v in data.values()))
    if isinstance(data, list):
        return set().union(*(_keys(v) for v in data))
    return set()


def _json_span(start: str) -> set[str]:
    spans = [s for s in inline_spans() if s.startswith(start)]
    assert spans, f"README shows no `{start}...` record"
    return set(re.findall(r'"(\w+)"', spans[0]))


def test_ingest_json_fields() -> None:
    from appliance.types import FailedFile, IngestReport

    report = IngestReport(failed=[FailedFile("a.txt", "why")])
    assert _json_span('{"added"') == _keys(json.loads(json.dumps(report.to_json())))


def test_search_json_fields() -> None:
    from appliance.retrieve.hybrid import SearchResult
    from appliance.types import Hit

    hit = Hit(chunk_id=1, path="a.md", title="A", heading="A", text="x", score=0.5,
              scores={"vector": 0.5, "keyword": None})
    assert _json_span('{"query"') == _keys(SearchResult("q", [hit]).to_json())
    reranked = Hit(chunk_id=1, path="a.md", title="A", heading="A", text="x", score=0.5,
                   scores={"vector": 0.5, "keyword": None, "rerank": -1.0})
    extra = _keys(reranked.to_json()) - _keys(hit.to_json())
    assert extra == {"rerank"} and "`--rerank`, `scores` also holds `rerank`" in README


def test_answer_record_fields() -> None:
    from appliance.pipeline import answer
    from appliance.types import Citation

    text = bullet("Answer record")
    named = set(inline_spans(text))
    record = answer("What colour is the sky?", generator=FakeGenerator("Blue."),
                    settings=load_settings(), mode="base").to_json()
    fields = set(record) | set(record["timings_ms"]) | set(record["tokens"]) \
        | {f.name for f in dataclasses.fields(Citation)}
    missing = sorted(fields - named)
    assert not missing, f"README's Answer record omits {missing}"
    source = "\n".join(p.read_text(encoding="utf-8") for p in (REPO / "appliance").rglob("*.py"))
    flags = inline_spans(text.split("`flags`", 1)[1])
    assert "no_citation" in flags, flags

    def quoted(flag: str) -> str:  # how the code spells it: "no_citation", f"sources_dropped:{n}"
        head, _, tail = flag.partition(":")
        return f'"{head}:' if tail.isdigit() else f'"{flag}"'

    unknown = [f for f in flags if quoted(f) not in source]
    assert not unknown, f"README's Answer record names flags nothing sets: {unknown}"


def test_question_files_for_batch(tmp_path: Path) -> None:
    from appliance.batch import journal_path, read_questions

    text = bullet("Question files")
    assert {".txt", ".jsonl", ".csv"} <= set(inline_spans(text))
    (tmp_path / "q.txt").write_text("Why?\n\nHow?\n", encoding="utf-8")
    (tmp_path / "q.jsonl").write_text('{"id": "a", "question": "Why?", "topic": "x"}\n'
                                      '{"id": "b", "question": ""}\n{broken\n', encoding="utf-8")
    (tmp_path / "q.csv").write_text("id,question\nc,Why?\nd,\n", encoding="utf-8")
    txt, _ = read_questions(tmp_path / "q.txt")
    assert [q.question for q in txt] == ["Why?", "How?"]
    jsonl, bad = read_questions(tmp_path / "q.jsonl")
    assert [(q.id, q.extra.get("topic")) for q in jsonl] == [("a", "x")]  # extra fields kept
    assert [b.line for b in bad] == [2, 3]  # bad rows with their line numbers
    csv, bad = read_questions(tmp_path / "q.csv")
    assert [q.id for q in csv] == ["c"] and [b.line for b in bad] == [3]
    assert "`OUT.partial.jsonl`" in bullet("Batch outputs")
    assert journal_path(Path("OUT"), "csv").name == "OUT.partial.jsonl"


def test_training_data_and_input_limit(tmp_path: Path) -> None:
    from appliance.files import MAX_INPUT_BYTES
    from appliance.train.data import validate_chat_jsonl

    text = bullet("Training data")
    assert '`{"messages": [{"role", "content"}, ...]}`' in " ".join(text.split())
    good = {"messages": [{"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello."}]}
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps(good) + "\n{broken\n", encoding="utf-8")
    report = validate_chat_jsonl(data)
    assert [i.line for i in report.issues] == [2]
    m = re.search(r"at most (\d+) MiB", text)
    assert m and int(m.group(1)) * 1024 * 1024 == MAX_INPUT_BYTES


def test_eval_set_fields_and_report_files(tmp_path: Path) -> None:
    from appliance.evaluate.runner import REPORT_FILES, load_eval_set

    text = bullet("Eval set")
    named = inline_spans(text)
    fields = [n for n in named if re.fullmatch(r"[a-z_]+", n)]
    assert fields[:6] == ["id", "question", "answers", "answerable", "gold_sources", "format"]
    rows = [{"id": "a", "question": "Which exception?", "answers": ["AssertionError"],
             "answerable": True, "gold_sources": ["assert.rst"], "format": "^[A-Z]"},
            {"id": "b", "question": "Who won?", "answers": [], "answerable": False}]
    path = tmp_path / "set.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    data = load_eval_set(path)
    assert not data.bad_rows and [i.id for i in data.items] == ["a", "b"]
    # each named field is read (an unknown key is ignored, so a renamed one would load too)
    first = data.items[0]
    assert (first.question, first.answers, first.answerable, first.gold_sources,
            first.format) == ("Which exception?", ["AssertionError"], True, ["assert.rst"],
                              "^[A-Z]")
    assert data.items[1].answerable is False
    example = REPO / "examples" / "eval" / "pydoc-eval.jsonl"
    assert f"`{example.relative_to(REPO)}`" in text
    assert not load_eval_set(example).bad_rows
    patterns = [n.replace("MODE", "*") for n in named if re.fullmatch(r"[\w*-]+\.[\w*]+", n)]
    assert patterns, "README names no report file"
    for name in REPORT_FILES:
        assert any(fnmatch.fnmatch(name, p) for p in patterns), f"README omits {name}"
    for p in patterns:
        assert any(fnmatch.fnmatch(name, p) for name in REPORT_FILES), f"eval writes no {p}"


# -- other facts ------------------------------------------------------------------------------


def test_ingested_file_types() -> None:
    m = re.search(r"\*\*Ingest\*\* `([^`]+)`", README)
    assert m
    assert set(m.group(1).split()) <= set(IngestSettings.model_validate({}).extensions)


def test_knowledge_base_tables() -> None:
    text = section("Knowledge base format")
    named = set(re.findall(r"`(\w+)`\s+\(", text))
    schema = (REPO / "appliance" / "store" / "schema.py").read_text(encoding="utf-8")
    created = set(re.findall(r"CREATE (?:VIRTUAL )?TABLE (\w+)", schema))
    assert named == created


def test_pinned_versions() -> None:
    vec = re.search(r"sqlite-vec (\d+\.\d+\.\d+)", README)
    assert vec and f"sqlite-vec=={vec.group(1)} " in (REPO / "requirements" / "run.lock"
                                                     ).read_text(encoding="utf-8")
    llama = re.search(r"llama-cpp-python (\d+\.\d+\.\d+)", README)
    assert llama and f"LLAMA_VERSION={llama.group(1)}\n" in (REPO / "scripts" / "setup.sh"
                                                            ).read_text(encoding="utf-8")


def test_squad_split_articles() -> None:
    from appliance.evaluate.squad import DEV_ARTICLES, TEST_ARTICLES

    m = re.search(r"dev = ([\w,\s]+);\s+test = ([\w,\s]+);", README)
    assert m, "README no longer lists the SQuAD split"
    assert tuple(re.split(r",\s+", m.group(1))) == DEV_ARTICLES
    assert tuple(re.split(r",\s+", m.group(2))) == TEST_ARTICLES


def test_demo_question_outside_the_corpus() -> None:
    from appliance.demo import SAMPLE_QUESTIONS

    m = re.search(r'the fourth \("([^"]+)"\)', README)
    assert m and SAMPLE_QUESTIONS[3] == m.group(1)


def test_tui_keys_and_snapshots() -> None:
    text = " ".join(section("Terminal UI").split())
    app = (REPO / "appliance" / "tui" / "app.py").read_text(encoding="utf-8")
    bound = {k for keys in re.findall(r'Binding\("([^"]+)"', app) for k in keys.split(",")}
    keys = {k.lower() for k in re.findall(r"\b(F\d+|Ctrl\+[A-Z])\b", text)}
    keys |= {"escape"} if "Esc" in text else set()
    assert {"f1", "f7", "ctrl+q"} <= keys
    assert keys - {"ctrl+c"} <= bound, f"README names keys the TUI does not bind: {keys - bound}"
    if "ctrl+c" in keys:  # Textual binds Ctrl+C to the help_quit action; the app overrides it
        assert "def action_help_quit" in app
    m = re.search(r"compares (\d+) screens", text)
    snapshots = (REPO / "tests" / "tui" / "test_tui_snapshots.py").read_text(encoding="utf-8")
    assert m and int(m.group(1)) == snapshots.count("assert snap_compare(")
    sizes = {f"{w} x {h}" for w, h in re.findall(r"terminal_size=\(?(\d+), (\d+)\)", snapshots)}
    sizes |= {"{} x {}".format(*re.findall(r"^SIZE = \((\d+), (\d+)\)", snapshots, re.M)[0])}
    assert all(s in text for s in sizes), sizes
