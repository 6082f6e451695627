"""The memorisation probe of pretrained SmolLM2-135M ("The Memorization Problem: Can We Trust
LLMs' Economic Forecasts?", 2025; issue 25): exact recall of the numbers and names of the King
James books of the law, against the same contexts with a value of the same kind they never
carried, and against fictional values that exist nowhere.

    jaxcl run lm-recall --tiny                 # seconds; a random byte-level model (the tests)
    jaxcl run lm-recall                        # pretrained SmolLM2-135M, the books of the law
    jaxcl run lm-recall --set data.source=bible:gospels --set data.kinds=entities

Expected runtime (2-core CPU): --tiny seconds; default 9.6 min beside another heavy job (the
forward passes of 2 x 599 probes of <= 128 tokens through the 135M model; no training).

Measured result, default (results/studies/lm-recall.json; 95 % intervals over items, one model):

    <!-- results: results/studies/lm-recall.json cols=n,exact,exact_ci,exact_cf,exact_diff_ci,pref,pref_ci -->
    | items                | items   | exact | ± (95 %) | exact, control value | ± (paired) | pref (nats/token) | ±      |
    |----------------------|---------|-------|----------|----------------------|------------|-------------------|--------|
    | numbers (bible:law)  | 199.000 |   1.5 |   1.7    |   0.5                |   2.0      |  0.762            |  0.254 |
    | numbers (fictional)  | 100.000 |   0.0 |   0.0    |   0.0                |   0.0      | -0.005            |  0.044 |
    | entities (bible:law) | 200.000 |  19.5 |   5.5    |   0.5                |   5.6      |  3.175            |  0.490 |
    | entities (fictional) | 100.000 |   0.0 |   0.0    |   0.0                |   0.0      | -0.040            |  0.504 |

Names are reconstructed from the verse (reproduced); the numbers are preferred but not recalled
exactly (not shown at 135M). README: "Language-model memory studies".

Writes runs/lm-recall[-tiny]/{results.json, recall.png}.
"""


def get_config(tiny: bool = False) -> dict:
    cfg = {"study": "lm-recall"}
    if tiny:
        cfg.update(
            model={"name": "tiny", "tokenizer": "byte", "compute_dtype": "float32"},
            data={"source": "bible:genesis", "n_items": 12, "n_fictional": 6, "max_len": 160},
            eval={"batch_size": 8},
        )
    return cfg
