"""The domain-sequence study (``mm-domains``): its tiny run writes each row's domain matrix and
cross-task accuracies, the columns are what the module docstring defines (checked by loops over a
hand-made trace), the cross-task set is never trained on its domain, and the stand-alone row's
model of a domain is the same wherever the domain stands in the sequence (a fresh model each)."""

import json

import numpy as np

from jaxcl import cli, config
from jaxcl import metrics as M
from jaxcl.loops import seeds_keys
from jaxcl.studies import mm_cit, mm_domains


def tiny_cfg(*sets):
    return config.resolve(config.load("mm-domains", tiny=True), list(sets))


def test_tiny_run_writes_the_domain_matrices(tmp_path):
    out = tmp_path / "o"
    assert cli.main(["run", "mm-domains", "--tiny", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert list(res["rows"]) == ["standalone", "er"]
    assert res["extra"]["sets"] == ["digits", "mnist-10k", "fashion-mnist", "attributes@mnist-10k"]
    for name, row in res["rows"].items():
        A, X = np.asarray(row["A_per_seed"]), np.asarray(row["X_per_seed"])
        assert A.shape == (2, 3, 3) and X.shape == (2, 3, 1) and ((A >= 0) & (A <= 1)).all()
        own = A[:, [0, 1, 2], [0, 1, 2]].mean(-1)
        want_acc = own if name == "standalone" else A[:, -1].mean(-1)
        np.testing.assert_allclose(row["per_seed"]["acc"], want_acc, atol=1e-6)
        assert ("forgetting" in row["per_seed"]) == (name != "standalone")
    assert (out / "accuracy_matrix.png").exists() and (out / "domains.png").exists()


def test_columns_by_loops_over_a_hand_made_trace():
    rng = np.random.default_rng(0)
    S, D, E, H = 3, 3, 2, 2
    trace = rng.random((S, D, E, D + H)).astype(np.float32)
    know = rng.random((S, D, D + H)).astype(np.float32)
    r = {"trace": trace, "know": know, "seconds": 1.0}
    held_dom = [1, 2]  # cross-task set h belongs to domain held_dom[h]
    for standalone in (False, True):
        got = mm_domains.row_metrics(r, D, held_dom, standalone)
        for s in range(S):
            A = trace[s, :, -1, :D].astype(np.float64)
            X = trace[s, :, -1, D:]
            seen = lambda i, j: j == i if standalone else j <= i  # noqa: E731
            unseen = [A[i, j] for i in range(D) for j in range(D) if not seen(i, j)]
            np.testing.assert_allclose(got["cross_domain"][s], np.mean(unseen), rtol=1e-6)
            np.testing.assert_allclose(
                got["just_trained"][s], np.mean([A[i, i] for i in range(D)]), rtol=1e-6
            )
            if standalone:
                np.testing.assert_allclose(got["acc"][s], np.mean([A[i, i] for i in range(D)]), rtol=1e-6)
                ct = np.mean([X[held_dom[h], h] for h in range(H)])
                assert "forgetting" not in got
            else:
                np.testing.assert_allclose(got["acc"][s], A[-1].mean(), rtol=1e-6)
                ct = X[-1].mean()
                np.testing.assert_allclose(got["forgetting"][s], M.forgetting(A), rtol=1e-6)
            np.testing.assert_allclose(got["cross_task"][s], ct, rtol=1e-6)


def test_the_cross_task_set_is_never_trained_on_its_domain():
    cfg = tiny_cfg("data.n_train=40", "data.n_eval=10")
    train, ev = mm_domains.build_domains(cfg)
    text = lambda tokens: bytes(int(t) for t in tokens if 0 < t < 256).decode(errors="replace")  # noqa: E731
    prompts = lambda part, k: {text(t).split("\n")[0] for t in np.asarray(part["tokens"][k])}  # noqa: E731
    assert prompts(train, 1) == {"what is this?"}  # MNIST: captions only
    assert "what is this?" in prompts(train, 0) and len(prompts(train, 0)) > 1  # digits: both kinds
    held = prompts(ev, 3)  # attributes@mnist-10k: the digits' attribute questions only
    assert held and "what is this?" not in held and held <= prompts(train, 0)
    assert train["image"].shape[1:] == (40, 16, 16, 1) and ev["image"].shape[:2] == (4, 10)


def test_standalone_models_do_not_depend_on_the_order():
    """A stand-alone model per domain: the model of MNIST is the same whether MNIST comes first or
    second (the same initial keys, the same batches), so the rows of A swap with the order."""
    cfg = tiny_cfg("data.held_out=", "seeds=1")
    cfg_b = tiny_cfg("data.held_out=", "seeds=1", "data.domains=mnist-10k,digits,fashion-mnist")
    keys = seeds_keys(0, 1)

    class Bar:
        def update(self, n):
            pass

    def rows(c):
        train, ev = mm_domains.build_domains(c)
        model = mm_cit.model_of(c, train["image"].shape[2:])
        prog = mm_cit.make_program(c, model, "finetune")
        r = mm_cit.run_row(c, prog, {"train": train, "eval": ev}, keys, Bar(), fresh=True)
        return r["trace"][0, :, -1], r["know"][0]  # answer and knowledge accuracy, D x D each

    (A, KA), (B, KB) = rows(cfg), rows(cfg_b)  # B in the order mnist, digits, fashion
    perm = [1, 0, 2]
    np.testing.assert_allclose(B[perm][:, perm], A, atol=1e-6)
    np.testing.assert_allclose(KB[perm][:, perm], KA, atol=1e-6)
    assert not np.allclose(KB, KA)  # the order matters to the matrices: the test sees the swap


def test_bad_held_out_is_one_line_exit_2(capsys, tmp_path):
    args = [
        "run",
        "mm-domains",
        "--tiny",
        "--set",
        "data.held_out=counting@mnist-10k",
        "--out",
        str(tmp_path),
    ]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "data.held_out" in err
