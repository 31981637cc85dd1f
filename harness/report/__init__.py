"""Reports: result records (+ the papers' values) -> reports/<experiment>/README.md and plots.

This package reads records only; it never imports training code (torch, transformers, peft)."""
