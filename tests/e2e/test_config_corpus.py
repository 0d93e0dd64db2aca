"""The configuration corpus: schemas/ and `infergate -t` must agree on it.

tests/config-corpus/<valid|invalid>/<NN-name>/ holds hosts.json (always) and,
as needed, api-keys.json, policies.yaml and extra files (key files). Also:
  expect              invalid cases: first line is a substring of the `-t`
                      output, `FILE:LINE:COL: json.path: message` (FILE is the
                      base name; it may stop after the path, or after `FILE:`
                      for syntax errors)
  schema-cannot-tell  invalid cases a JSON Schema cannot see (cross-file
                      references, duplicates, files, environment): only the
                      gateway has to reject them
  env                 NAME=VALUE lines set for the gateway run; every other
                      INFERGATE_TEST_* variable is removed from its environment

For each case the present files are validated against schemas/*.schema.json
(Draft 2020-12; YAML read with YAML 1.2 booleans, so `on:` is a string key;
an empty or comment-only YAML document is {}), and `$INFERGATE_BIN -t -c DIR`
is run (default ./infergate; relative paths are relative to the repository
root, which is also the working directory). When INFERGATE_BIN is unset and
./infergate does not exist the gateway half is skipped; when it is set and
missing that is a failure.

The last tests keep schemas/ and docs/configuration.md in step: every key the
schemas know is documented in the right section, and every key in a table of
the reference is known to the schemas.
"""
import json
import os
import re
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "config-corpus"
SCHEMAS = ROOT / "schemas"
DOC = ROOT / "docs" / "configuration.md"

CONFIG_FILES = {
    "hosts.json": "hosts.schema.json",
    "api-keys.json": "api-keys.schema.json",
    "policies.yaml": "policies.schema.json",
}
EXPECT_RE = re.compile(r"^(hosts\.json|api-keys\.json|policies\.yaml):((\d+:(\d+:( \S+:.*)?)?)?)$")


# ----------------------------------------------------------------- loading
class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core booleans: only true/false, so `on`,
    `off`, `yes`, `no` stay strings (retry.on is a key)."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def load_config_file(path):
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return json.loads(text)
    doc = yaml.load(text, Loader=_Yaml12Loader)
    return {} if doc is None else doc


def _schema(name):
    return json.loads((SCHEMAS / name).read_text(encoding="utf-8"))


VALIDATORS = {}


def validator(file_name):
    if file_name not in VALIDATORS:
        VALIDATORS[file_name] = jsonschema.Draft202012Validator(_schema(CONFIG_FILES[file_name]))
    return VALIDATORS[file_name]


def _fmt_path(parts):
    out = ""
    for p in parts:
        out += "[%d]" % p if isinstance(p, int) else ("." if out else "") + str(p)
    return out


def schema_problems(case_dir):
    """Every schema problem of the files present in case_dir, as strings."""
    problems = []
    for name in CONFIG_FILES:
        path = case_dir / name
        if not path.exists():
            continue
        try:
            doc = load_config_file(path)
        except (ValueError, yaml.YAMLError) as e:
            problems.append("%s: does not parse: %s" % (name, str(e).splitlines()[0]))
            continue
        for err in validator(name).iter_errors(doc):
            problems.append("%s: %s: %s" % (name, _fmt_path(err.absolute_path), err.message))
    return problems


# ----------------------------------------------------------------- cases
def all_cases():
    cases = []
    for kind in ("valid", "invalid"):
        base = CORPUS / kind
        if base.is_dir():
            cases += [d for d in sorted(base.iterdir()) if d.is_dir()]
    return cases


CASES = all_cases()
CASE_IDS = ["%s/%s" % (d.parent.name, d.name) for d in CASES]


def is_valid_case(case_dir):
    return case_dir.parent.name == "valid"


def expect_line(case_dir):
    return (case_dir / "expect").read_text(encoding="utf-8").splitlines()[0]


def case_env(case_dir):
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERGATE_TEST_")}
    env_file = case_dir / "env"
    if env_file.exists():
        for line in env_file.read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.startswith("#"):
                k, _, v = line.partition("=")
                env[k.strip()] = v
    return env


def secrets_of(case_dir):
    """Upstream key values of the case, which no output may show."""
    out = []
    path = case_dir / "api-keys.json"
    try:
        keys = json.loads(path.read_text(encoding="utf-8")).get("apiKeys", [])
    except (OSError, ValueError, AttributeError):
        return out
    for k in keys if isinstance(keys, list) else []:
        if isinstance(k, dict) and isinstance(k.get("key"), str) and len(k["key"]) >= 6 and "${" not in k["key"]:
            out.append(k["key"])
    return out


def gateway_binary():
    configured = os.environ.get("INFERGATE_BIN")
    path = Path(configured or "./infergate")
    if not path.is_absolute():
        path = ROOT / path
    if not path.exists():
        if configured:
            pytest.fail("INFERGATE_BIN=%s does not exist" % configured)
        pytest.skip("no ./infergate binary (build it or set INFERGATE_BIN)")
    return path


def run_check(case_dir):
    binary = gateway_binary()
    r = subprocess.run(
        [str(binary), "-t", "-c", os.path.relpath(case_dir, ROOT)],
        cwd=ROOT, env=case_env(case_dir), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20,
    )
    return r.returncode, r.stdout.decode("utf-8", "replace"), r.stderr.decode("utf-8", "replace")


# ----------------------------------------------------------------- tests
def test_corpus_has_enough_cases():
    valid = [d for d in CASES if is_valid_case(d)]
    invalid = [d for d in CASES if not is_valid_case(d)]
    assert len(CASES) >= 40, len(CASES)
    assert len(valid) >= 10 and len(invalid) >= 20, (len(valid), len(invalid))


@pytest.mark.parametrize("case_dir", CASES, ids=CASE_IDS)
def test_case_layout(case_dir):
    assert (case_dir / "hosts.json").is_file(), "every case has a hosts.json"
    assert re.match(r"^\d\d-[a-z0-9-]+$", case_dir.name), case_dir.name
    if is_valid_case(case_dir):
        assert not (case_dir / "expect").exists()
        assert not (case_dir / "schema-cannot-tell").exists()
    else:
        line = expect_line(case_dir)
        assert EXPECT_RE.match(line), "expect line %r is not FILE:LINE:COL: path: ..." % line
        assert (case_dir / line.split(":")[0]).is_file(), "expect names a file the case does not have"


def test_schemas_are_valid_and_examples_pass():
    for name in CONFIG_FILES.values():
        schema = _schema(name)
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"] == "https://infergate.dev/schemas/" + name
        v = jsonschema.Draft202012Validator(schema)
        for ex in schema.get("examples", []):
            v.validate(ex)
        # editors show these: every property has a title and a description
        for sub in _subschemas(schema):
            for key, prop in sub.get("properties", {}).items():
                if set(prop) == {"const"}:
                    continue  # a discriminator inside an `if`
                assert prop.get("title") and prop.get("description"), (name, key)
        # examples of every property validate against that property's schema
        for sub in _subschemas(schema):
            if "examples" in sub and sub is not schema:
                sv = v.evolve(schema=sub)
                for ex in sub["examples"]:
                    assert sv.is_valid(ex), (name, sub.get("title"), ex)
        # and so do the defaults
        for sub in _subschemas(schema):
            if "default" in sub:
                assert v.evolve(schema=sub).is_valid(sub["default"]), (name, sub.get("title"), sub["default"])


@pytest.mark.parametrize("case_dir", CASES, ids=CASE_IDS)
def test_schema_agrees(case_dir):
    problems = schema_problems(case_dir)
    if is_valid_case(case_dir):
        assert problems == [], "schema rejects a valid case:\n" + "\n".join(problems)
    elif not (case_dir / "schema-cannot-tell").exists():
        assert problems, "schema accepts an invalid case (add schema-cannot-tell if it cannot tell)"


@pytest.mark.parametrize("case_dir", CASES, ids=CASE_IDS)
def test_gateway_check(case_dir):
    code, out, err = run_check(case_dir)
    both = out + err
    for secret in secrets_of(case_dir):
        assert secret not in both, "an upstream key appears in the -t output"
    if is_valid_case(case_dir):
        assert code == 0, "exit %d for a valid case:\n%s" % (code, both)
        assert "configuration ok" in out, both
    else:
        assert code == 1, "exit %d for an invalid case:\n%s" % (code, both)
        want = expect_line(case_dir)
        assert want in both, "expected a line containing %r in:\n%s" % (want, both)


# ----------------------------------------------------------------- docs
def _subschemas(schema):
    """Every subschema dict of a schema document (no $ref following)."""
    stack, seen = [schema], []
    while stack:
        s = stack.pop()
        if not isinstance(s, dict) or any(s is x for x in seen):
            continue
        seen.append(s)
        for k, v in s.items():
            if k in ("properties", "$defs", "patternProperties"):
                stack.extend(v.values())
            elif k in ("items", "additionalProperties", "not", "if", "then", "else", "propertyNames"):
                stack.append(v)
            elif k in ("anyOf", "oneOf", "allOf", "prefixItems"):
                stack.extend(v)
    return seen


def _keys(root, sub):
    """Property names reachable from sub (following local $refs)."""
    names, stack, seen = set(), [sub], set()
    while stack:
        s = stack.pop()
        if not isinstance(s, dict) or id(s) in seen:
            continue
        seen.add(id(s))
        ref = s.get("$ref")
        if ref and ref.startswith("#/$defs/"):
            stack.append(root["$defs"][ref.split("/")[-1]])
        props = s.get("properties", {})
        names.update(props)
        stack.extend(props.values())
        for k in ("items", "additionalProperties", "then", "else"):
            stack.append(s.get(k))
        for k in ("anyOf", "oneOf", "allOf"):
            stack.extend(s.get(k, []))
    return names


def _doc_blocks():
    """{block name: text}: '## hosts.json', '## api-keys.json', and one per
    '### section' of policies.yaml."""
    text = DOC.read_text(encoding="utf-8")
    blocks = {}
    for m in re.finditer(r"^## (\S+)\n(.*?)(?=^## |\Z)", text, re.S | re.M):
        blocks[m.group(1)] = m.group(2)
    for m in re.finditer(r"^### (\S+)\n(.*?)(?=^##|\Z)", blocks.get("policies.yaml", ""), re.S | re.M):
        blocks["policies.yaml/" + m.group(1)] = m.group(2)
    return blocks


def _doc_scopes():
    """(block name, schema, subschema) for every documented scope."""
    out = [("hosts.json", _schema("hosts.schema.json")), ("api-keys.json", _schema("api-keys.schema.json"))]
    scopes = [(b, s, s) for b, s in out]
    pol = _schema("policies.schema.json")
    for section, sub in pol["properties"].items():
        scopes.append(("policies.yaml/" + section, pol, sub))
    return scopes


def test_schema_keys_are_documented():
    blocks = _doc_blocks()
    missing = []
    for block, root, sub in _doc_scopes():
        if block not in blocks:
            missing.append("no section for %s in docs/configuration.md" % block)
            continue
        for key in sorted(_keys(root, sub)):
            if "`%s`" % key not in blocks[block]:
                missing.append("%s: `%s`" % (block, key))
    assert not missing, "keys in schemas/ but not in docs/configuration.md:\n" + "\n".join(missing)


def test_documented_keys_are_in_schemas():
    blocks = _doc_blocks()
    pol = _schema("policies.schema.json")
    unknown = [("policies.yaml", s) for s in re.findall(r"^### (\S+)$", blocks.get("policies.yaml", ""), re.M)
               if s not in pol["properties"]]
    for block, root, sub in _doc_scopes():
        known = _keys(root, sub)
        for key in re.findall(r"^\| `([^`]+)` \|", blocks.get(block, ""), re.M):
            if key not in known:
                unknown.append((block, key))
    assert not unknown, "keys in docs/configuration.md tables but not in schemas/: %r" % unknown
