"""viq as an lmms-eval model on the shipped ``viq_synth`` task (docs/design.md C36): lmms-eval's
own ``simple_evaluate`` (the model found through the ``lmms_eval.models`` entry point) answers a
tiny trained run's split exactly as ``viq eval`` does, question by question, in ``images``,
``codes`` (a code store, no encoder) and ``blind`` modes; ``loglikelihood`` equals a direct
forward of the run's LLM; bad ``model_args`` fail in one error naming the argument."""

import json
import shutil

import lmms_eval  # noqa: F401  (the test extra and lmms-eval --no-deps: README)
import pytest
import torch

from viq.data.score import answers_match
from viq.eval.understanding import evaluate, load_run


def _lmms(run, split_task: str, include: str, args: str = ""):
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    tm = TaskManager(include_path=include, include_defaults=False)
    out = simple_evaluate(model="viq", model_args=f"run={run}{args}", tasks=[split_task],
                          task_manager=tm, log_samples=True, batch_size=8)
    return out["results"][split_task], out["samples"][split_task]


def _agree(results, samples, report, preds, split):
    refs = {r["id"]: r for r in json.loads(split.read_text())}
    assert len(samples) == len(refs)
    for s in samples:  # question by question: the same answer, the same verdict
        key = s["doc"]["id"]
        assert s["filtered_resps"][0] == preds[key], key
        assert s["exact_match"] == float(answers_match(preds[key], refs[key]["answer"]))
    assert results["exact_match,none"] == pytest.approx(report.overall.accuracy)
    for cat, tally in report.per_category.items():
        assert results[f"{cat},none"] == pytest.approx(tally.accuracy)


def test_lmms_eval_reproduces_viq_eval(s22_run, monkeypatch):
    from viq.demo.evaluate import stored_codes
    from viq.eval.lmms_tasks import task_dir, write_task

    run, data = s22_run / "s22", s22_run / "s22" / "data"
    obj = load_run(run)
    # the shipped task folder, run in the split's folder (it reads ./test.json): images mode
    monkeypatch.chdir(data)
    report, preds = evaluate(obj, data / "test.json", "images")
    _agree(*_lmms(run, "viq_synth", str(task_dir())), report, preds, data / "test.json")
    # a task bound to the train split (write_task), from the store and blind
    task = write_task(data / "train.json", s22_run / "task", "viq_train")
    store = s22_run / "store"
    for mode, args in (("codes", f",codes={store}"), ("blind", ",mode=blind")):
        report, preds = evaluate(obj, data / "train.json", mode, codes=stored_codes(store))
        _agree(*_lmms(run, "viq_train", str(task), args), report, preds, data / "train.json")


def _model(args: str, simple: bool = False):
    from lmms_eval.models import get_model

    # the entry point's chat class (lmms-eval's default), or its simple class
    return get_model("viq", force_simple=simple).create_from_arg_string(args)


def _req(kind, args, doc_id):
    from lmms_eval.api.instance import Instance

    return Instance(request_type=kind, arguments=args, idx=0,
                    metadata={"task": "t", "doc_id": doc_id, "repeats": 1})


def test_loglikelihood_is_the_runs_own_log_probability(s22_run):
    from viq.data.chat import render
    from viq.data.images import load_for_encoder
    from viq.eval.lmms_tasks.viq_synth import utils

    run, data = s22_run / "s22", s22_run / "s22" / "data"
    lm = _model(f"run={run}", simple=True)
    docs = json.loads((data / "train.json").read_text())[:3]
    for d in docs:
        d["image"] = [{"img_path": str(data / e["img_path"])} for e in d["image"]]
    lm.task_dict = {"t": {"test": docs}}
    greedy = lm.generate_until([_req("generate_until", (
        utils.doc_to_text(docs[2]), {"max_new_tokens": 1, "until": []}, utils.doc_to_visual, 2,
        "t", "test"), 2)])[0]
    conts = [" yes", "red", greedy or "!"]
    reqs = [_req("loglikelihood", (utils.doc_to_text(d), c, utils.doc_to_visual, i, "t", "test"),
                 i) for i, (d, c) in enumerate(zip(docs, conts, strict=True))]
    got = lm.loglikelihood(reqs)
    obj, tok = lm.obj, lm.obj.tokenizer
    for (d, c), (ll, is_greedy) in zip(zip(docs, conts, strict=True), got, strict=True):
        # by hand: the chat prompt, the image's block of features, one forward of the LLM
        img = load_for_encoder(d["image"][0]["img_path"], obj.cfg.model.image)
        feats = obj.features([img], pool=False)[0]
        block = obj.text.projector(feats)[0]
        text = render(tok, [{"role": "system", "content": obj.cfg.data.loader.system_prompt},
                            {"role": "user", "content": "<image>\n" + utils.doc_to_text(d)}],
                      add_generation_prompt=True)
        before, after = text.split("<image>")
        emb = obj.text.llm.get_input_embeddings()
        a, b = tok.encode(before, add_special_tokens=False), tok.encode(after,
                                                                          add_special_tokens=False)
        cont = tok.encode(c, add_special_tokens=False)
        x = torch.cat([emb(torch.tensor(a)), block.to(emb.weight.dtype),
                       emb(torch.tensor(b + cont))])[None]
        with torch.no_grad():
            logp = obj.text.llm(inputs_embeds=x).logits[0].float().log_softmax(-1)
        n = len(cont)
        rows = logp[-n - 1:-1]
        want = float(rows[torch.arange(n), torch.tensor(cont)].sum())
        assert ll == pytest.approx(want, abs=1e-4)
        assert is_greedy == bool((rows.argmax(-1) == torch.tensor(cont)).all())
    if greedy:  # the greedy answer's first token is the greedy continuation
        assert got[2][1] is True


def test_bad_model_args_name_the_argument(s22_run, tmp_path):
    from viq.cli.main import main
    from viq.eval.lmms import ModelArgError

    run = s22_run / "s22"
    cases = [("codes=x", "run="), (f"run={tmp_path / 'none'}", "run="),
             (f"run={run},mode=sideways", "mode="), (f"run={run},dtype=fp8", "dtype="),
             (f"run={run},colour=red", "colour"), (f"run={run},codes={tmp_path}", "codes=")]
    # a run without an LLM: the same run's config with the text loss off
    nollm = tmp_path / "nollm" / "final"
    shutil.copytree(run / "final", nollm)
    cfg = json.loads((nollm / "train_config.json").read_text())
    cfg["stage"]["losses"]["text"] = 0.0
    (nollm / "train_config.json").write_text(json.dumps(cfg))
    cases.append((f"run={nollm.parent}", "run="))
    # a store of another model: the same split through a random tiny model
    other = tmp_path / "other"
    assert main(["extract", str(run / "data" / "train.json"), "--out", str(other), "--preset",
                 "tiny", "--random-init", "--quiet"]) == 0
    cases.append((f"run={run},codes={other}", "codes="))
    for args, named in cases:
        with pytest.raises(ModelArgError) as e:
            _model(args)
        assert named in str(e.value), (args, str(e.value))
        assert "\n" not in str(e.value)
