"""The papers' tables, one module each: its layout (`mirror`), its claims and the list of checks its report runs.

A new paper table is one module here (TABLE, mirror, CHECKS, GATED) plus its experiment config naming it in
`report.table` and its published values in harness/report/paper_values.yaml; register it in MODULES below.
"""

from __future__ import annotations

from harness.report.claims import memory_full_above_lora
from harness.report.paper_tables import (lora_table2, lora_table3, lora_table5, lora_table6, qlora_fig2_fig4,
                                         qlora_table2, qlora_table3, qlora_table4)

MODULES = (lora_table2, lora_table3, lora_table5, lora_table6, qlora_table2, qlora_table3, qlora_fig2_fig4,
           qlora_table4)
MIRRORS = {m.TABLE: m.mirror for m in MODULES if m.mirror is not None}
CHECKS = {m.TABLE: list(m.CHECKS) for m in MODULES}
CHECKS["sanity"] = []  # fine-tuning vs its baselines (harness/report/sanity.py), no paper claim
# a generic grid (no report.table): whichever claims it can test
CHECKS[None] = [lora_table6.table6_low_rank_suffices, qlora_table3.table3_quantized_match, memory_full_above_lora,
                qlora_fig2_fig4.figures_all_linear]
GATED = tuple(fn for m in MODULES for fn in m.GATED)
