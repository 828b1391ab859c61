"""The CoMD driver is made of named parts: it imports nothing of the offline world, the
run/driver import cycle is gone, and its tables refuse what a data kind does not offer."""
import subprocess
import sys

import pytest

from tests._multidevice import REPO


def test_driver_imports_nothing_of_the_world_and_run_does_not_cycle():
    code = ("import ast, sys, comd_jax.distill.driver as d, comd_jax.run;"
            "bad = sorted(m for m in sys.modules if m.startswith(('comd_jax.data.synthetic', 'comd_jax.distill.offline',"
            " 'comd_jax.eval.synthetic', 'comd_jax.eval.world')));"
            "assert not bad, bad;"
            "tree = ast.parse(open(d.__file__).read());"
            "names = [n.module if isinstance(n, ast.ImportFrom) else a.name for n in ast.walk(tree)"
            " if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names];"
            "wrong = [m for m in names if m and ('synthetic' in m or 'offline' in m or m == 'comd_jax.run')];"
            "assert not wrong, wrong")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_teacher_endpoint_needs_a_url_or_a_checkpoint(tmp_path):
    from comd_jax import config as config_lib
    from comd_jax.distill.endpoint import TeacherEndpoint

    config = config_lib.preset("smoke")
    started = []
    with pytest.raises(ValueError, match="teacher_url .* or config.distill.teacher_checkpoint"):
        TeacherEndpoint(config, str(tmp_path), "", lambda *a, **k: started.append(a))
    import http.server
    import threading

    quiet = type("Quiet", (http.server.BaseHTTPRequestHandler,), {"log_message": lambda *a: None})
    httpd = http.server.HTTPServer(("127.0.0.1", 0), quiet)  # answers 501 to everything: still an answer
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        config.distill.teacher_url = f"http://127.0.0.1:{httpd.server_port}"  # no /v1: added
        with TeacherEndpoint(config, str(tmp_path), "/ckpt", lambda *a, **k: started.append(a)) as url:
            assert url == f"http://127.0.0.1:{httpd.server_port}/v1"
    finally:
        httpd.shutdown()
    assert not started  # a URL wins: no server of ours is started
    with pytest.raises(ConnectionError, match="config.distill.teacher_url=.* does not answer"):
        with TeacherEndpoint(config, str(tmp_path), "", lambda *a, **k: None):
            pass


def test_endpoint_keys_come_from_the_environment_variables_the_config_names(tmp_path, monkeypatch):
    from comd_jax import config as config_lib
    from comd_jax.distill.endpoint import TeacherEndpoint, api_key, snapshot

    config = config_lib.preset("paper")
    assert "teacher_api_key" not in config.distill  # only the variable's name is configurable
    monkeypatch.setenv("COMD_TEACHER_API_KEY", "sk-teacher-123")
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-judge-456")
    config.distill.judge_api_key_env = "MY_JUDGE_KEY"
    assert api_key(config, "teacher_api_key_env") == "sk-teacher-123"
    assert api_key(config, "judge_api_key_env") == "sk-judge-456"
    started = []
    endpoint = TeacherEndpoint(config, str(tmp_path), "/ckpt", lambda *a, **k: started.append(k))
    assert endpoint.key == "sk-teacher-123" and started[0]["api_key"] == "sk-teacher-123"  # our child requires it
    snapshot(config, str(tmp_path))
    written = open(tmp_path / "config.json").read()
    assert "sk-teacher-123" not in written and "sk-judge-456" not in written and "MY_JUDGE_KEY" in written
    monkeypatch.delenv("COMD_TEACHER_API_KEY")
    assert api_key(config, "teacher_api_key_env") == ""


def test_a_rerun_with_other_settings_names_each_changed_key(tmp_path, caplog):
    """A workdir resumes whatever its config, so a rerun that changed a setting says which,
    with both values; the same config again says nothing."""
    import logging

    from comd_jax import config as config_lib
    from comd_jax.distill.endpoint import changed, snapshot

    config = config_lib.preset("smoke")
    with caplog.at_level(logging.WARNING):
        snapshot(config, str(tmp_path))
        snapshot(config, str(tmp_path))
    assert not caplog.records
    config.distill.kd, config.tune.total_steps = "topk", 7
    with caplog.at_level(logging.WARNING):
        snapshot(config, str(tmp_path))
    (record,) = caplog.records
    message = record.getMessage()
    assert str(tmp_path / "config.json") in message
    assert "distill.kd ('none' -> 'topk')" in message and "tune.total_steps" in message
    assert "distill.kd_alpha" not in message
    assert config_lib.preset("smoke").distill.kd == "none"
    assert changed({"a": {"b": 1}, "c": 2}, {"a": {"b": 1, "d": 3}}) == [("a.d", None, 3), ("c", 2, None)]
    assert changed({"ablation": {"seeds": [0, 1]}}, {"ablation": {"seeds": [0]}}) == []  # the ablation's, not the run's


def test_judge_and_augmentor_tables_name_what_the_data_offers():
    from comd_jax.distill.driver import _pick

    table = {"llm": lambda client: ("llm", client)}
    assert _pick(table, "judge", "llm", "c") == ("llm", "c")
    with pytest.raises(ValueError, match=r"config.distill.judge='reference': this data offers \['llm'\]"):
        _pick(table, "judge", "reference", "c")


def test_unknown_data_kind_is_refused_by_name():
    from types import SimpleNamespace

    from comd_jax.distill.kinds import kind_for

    job = SimpleNamespace(config=SimpleNamespace(data=SimpleNamespace(kind="parquet")))
    with pytest.raises(ValueError, match="config.data.kind='parquet'"):
        kind_for(job)


def test_openai_base_urls_and_a_dead_endpoint_named():
    from comd_jax.distill.endpoint import check_answers, openai_base
    from comd_jax.serve.client import free_port

    assert openai_base("http://teacher:8000") == "http://teacher:8000/v1"
    assert openai_base("http://teacher:8000/v1/") == "http://teacher:8000/v1"
    assert openai_base("https://api.example.com/openai/v1") == "https://api.example.com/openai/v1"
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ConnectionError, match=r"config.distill.judge_url='http://127.0.0.1:\d+/v1' does not answer"):
        check_answers(url, "judge_url", timeout_s=2)


def test_reference_metric_follows_the_answer_form():
    from comd_jax.distill.user_data import metric_for

    assert [metric_for(a) for a in ("B", "(C)", "A.", "blue", "three red squares", "The sky is blue today.")] == \
        ["letter", "letter", "letter", "exact", "exact", "f1"]


@pytest.fixture(scope="module")
def pool_job(tmp_path_factory):
    from types import SimpleNamespace

    from PIL import Image
    from transformers import AutoTokenizer

    from comd_jax.configs import comd
    from comd_jax.data.images import ImageProcessorConfig
    from comd_jax.data.synthetic import world
    from comd_jax.data.synthetic.tokenizer import build_world_tokenizer

    root = tmp_path_factory.mktemp("pool")
    tokenizer = AutoTokenizer.from_pretrained(
        build_world_tokenizer(world.WorldSpec(seed=3, num_captions=8, num_instructions=8, num_heldout=4),
                              str(root / "tok"), vocab_size=600))
    (root / "img" / "a").mkdir(parents=True)
    Image.new("RGB", (32, 32), (200, 10, 10)).save(root / "img" / "a" / "x.jpg")
    config = comd.get_config("smoke")
    config.distill.pool_size = 3
    job = SimpleNamespace(config=config, workdir=str(root / "work"), tokenizer=tokenizer,
                          data=SimpleNamespace(image_processor=ImageProcessorConfig(size=32)))
    return root, job


def _pool_file(root, samples, name="pool.jsonl"):
    import json

    path = root / name
    path.write_text("".join(json.dumps(s) + "\n" for s in samples) + "{not json\n")
    return str(path)


def test_pool_is_linted_shuffled_by_seed_and_keeps_context(pool_job):
    import json

    from comd_jax import config as config_lib
    from comd_jax.distill.user_data import LlavaPool

    root, job = pool_job
    good = [{"id": i, "image": "a/x.jpg", "conversations": [{"from": "human", "value": f"<image>\nQ{i}?"},
                                                             {"from": "gpt", "value": f"A{i}"}]} for i in range(6)]
    multi = {"id": "m", "image": "a/x.jpg", "conversations": [
        {"from": "human", "value": "<image>\nFirst?"}, {"from": "gpt", "value": "One."},
        {"from": "human", "value": "Second?"}, {"from": "gpt", "value": "Two."}]}
    text_only = {"id": "t", "conversations": [{"from": "human", "value": "Say hi."}]}  # no answer: still usable
    missing = {"id": "gone", "image": "a/none.jpg", "conversations": good[0]["conversations"]}
    job.config.distill.pool_data = _pool_file(root, good + [multi, text_only, missing])
    job.config.distill.image_folder = str(root / "img")
    job.config.distill.pool_size = 100
    student = config_lib.model_config(job.config.model)
    pool = LlavaPool.open(job, student)
    assert pool.lint["samples"] == 10 and pool.lint["ok"] == 8
    assert pool.lint["skipped"] == {"malformed_json": 1, "missing_image": 1}
    by_id = {e.id: e for e in pool.entries()}
    assert set(by_id) == {"0", "1", "2", "3", "4", "5", "m", "t"}  # ids are strings
    m = by_id["m"]
    assert (m.instruction, m.reference, m.context[1]["value"]) == ("Second?", "Two.", "One.")
    assert m.as_llava()["conversations"][-2:] == [{"from": "human", "value": "Second?"},
                                                  {"from": "gpt", "value": "Two."}]
    assert by_id["t"].image is None and by_id["t"].reference is None
    assert json.load(open(root / "work" / "distill" / "pool_source.json"))["image_folder"] == str(root / "img")
    job.config.distill.pool_size = 3  # the seed's shuffle decides which 3, the same every time
    first = [e.id for e in LlavaPool.open(job, student).entries()]
    assert first == [e.id for e in LlavaPool.open(job, student).entries()] and len(first) == 3
    draws = set()
    for seed in range(1, 5):
        job.config.seed = seed
        draws.add(tuple(e.id for e in LlavaPool.open(job, student).entries()))
    job.config.seed = 0
    assert len(draws | {tuple(first)}) > 1  # the seed decides


def test_pool_refuses_duplicate_ids_and_a_moved_image_folder(pool_job):
    from comd_jax import config as config_lib
    from comd_jax.distill.user_data import LlavaPool

    root, job = pool_job
    sample = {"image": "a/x.jpg", "conversations": [{"from": "human", "value": "<image>\nQ?"},
                                                    {"from": "gpt", "value": "A"}]}
    job.config.distill.pool_data = _pool_file(root, [{"id": 7, **sample}, {"id": "7", **sample}], "dup.jsonl")
    job.config.distill.image_folder = str(root / "img")
    student = config_lib.model_config(job.config.model)
    with pytest.raises(ValueError, match=r"dup.jsonl: duplicate ids \['7'\]"):
        LlavaPool.open(job, student)
    job.config.distill.image_folder = str(root / "elsewhere")
    with pytest.raises(FileNotFoundError, match="this run started with .*img"):
        LlavaPool.open(job, student)
    job.config.distill.pool_data = str(root / "nope.json")
    with pytest.raises(FileNotFoundError, match="config.distill.pool_data=.*nope.json"):
        LlavaPool.open(job, student)


def test_tokenizer_and_image_processor_default_to_init_from(tmp_path):
    from comd_jax.configs import comd
    from comd_jax import stages

    config = comd.get_config("paper")
    with pytest.raises(ValueError, match="config.data.tokenizer"):
        stages.stage_data(config, str(tmp_path))
    (tmp_path / "tokenizer_config.json").write_text("{}")
    (tmp_path / "preprocessor_config.json").write_text('{"crop_size": {"height": 336, "width": 336}}')
    config.init_from = str(tmp_path)
    data = stages.stage_data(config, str(tmp_path))
    assert data.tokenizer_dir == str(tmp_path) and data.image_processor.size == 336
