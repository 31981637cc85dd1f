"""One fine-tuning run from the command line (Hydra): the thin entry point over harness.runner.execute.

    python -m harness.run model=minilm_l6 task=sst2 method=qlora_nf4_dq lora.r=16 lora.targets=qkvo
    python -m harness.run --cfg job          # print the composed config, load nothing
    python -m harness.run -m +experiment=lora_table6   # a sweep (resumable; make sweep)

The record (record.json in the run's output directory) is written atomically at the end, with status ok,
failed (error and traceback) or diverged. An interrupted run writes no record, so it never counts as done.
"""

from __future__ import annotations

import os

from harness.runner import _already_done, execute, log, reexec_with_process_env


def main() -> None:
    reexec_with_process_env()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import hydra
    from hydra.core.hydra_config import HydraConfig

    from harness.config import register

    register()

    @hydra.main(config_path="../conf", config_name="config", version_base="1.3")
    def app(cfg) -> None:
        from hydra.types import RunMode

        hc = HydraConfig.get()
        # Sweeps resume: harness_local skips done jobs before starting them; other launchers (submitit) land here.
        if hc.mode == RunMode.MULTIRUN and (done := _already_done(cfg)):
            log.info("skip: an ok record with this config hash exists (%s)", done)
            return
        execute(cfg, hc.runtime.output_dir)

    app()


if __name__ == "__main__":
    main()
