"""The memorisation probe of pretrained SmolLM2-135M ("The Memorization Problem: Can We Trust
LLMs' Economic Forecasts?", 2025; issue 25): exact recall of the numbers and names of the King
James books of the law, against the same contexts with a value of the same kind they never
carried, and against fictional values that exist nowhere.

    jaxcl run lm-recall --tiny                 # seconds; a random byte-level model (the tests)
    jaxcl run lm-recall                        # pretrained SmolLM2-135M, the books of the law
    jaxcl run lm-recall --set data.source=bible:gospels --set data.kinds=entities

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
