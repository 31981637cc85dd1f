"""MMLU scoring: accuracy per subject, the mean over subjects (the papers' MMLU number) and per category,
with the subject -> category grouping of the MMLU authors (hendrycks/test, categories.py)."""

from __future__ import annotations

import numpy as np

_SUB = {
    "math": "STEM", "physics": "STEM", "chemistry": "STEM", "biology": "STEM", "computer science": "STEM",
    "engineering": "STEM", "history": "humanities", "philosophy": "humanities", "law": "humanities",
    "politics": "social sciences", "culture": "social sciences", "economics": "social sciences",
    "geography": "social sciences", "psychology": "social sciences", "other": "other", "business": "other",
    "health": "other",
}
SUBCATEGORY = {
    "abstract_algebra": "math", "anatomy": "health", "astronomy": "physics", "business_ethics": "business",
    "clinical_knowledge": "health", "college_biology": "biology", "college_chemistry": "chemistry",
    "college_computer_science": "computer science", "college_mathematics": "math", "college_medicine": "health",
    "college_physics": "physics", "computer_security": "computer science", "conceptual_physics": "physics",
    "econometrics": "economics", "electrical_engineering": "engineering", "elementary_mathematics": "math",
    "formal_logic": "philosophy", "global_facts": "other", "high_school_biology": "biology",
    "high_school_chemistry": "chemistry", "high_school_computer_science": "computer science",
    "high_school_european_history": "history", "high_school_geography": "geography",
    "high_school_government_and_politics": "politics", "high_school_macroeconomics": "economics",
    "high_school_mathematics": "math", "high_school_microeconomics": "economics", "high_school_physics": "physics",
    "high_school_psychology": "psychology", "high_school_statistics": "math", "high_school_us_history": "history",
    "high_school_world_history": "history", "human_aging": "health", "human_sexuality": "culture",
    "international_law": "law", "jurisprudence": "law", "logical_fallacies": "philosophy",
    "machine_learning": "computer science", "management": "business", "marketing": "business",
    "medical_genetics": "health", "miscellaneous": "other", "moral_disputes": "philosophy",
    "moral_scenarios": "philosophy", "nutrition": "health", "philosophy": "philosophy", "prehistory": "history",
    "professional_accounting": "other", "professional_law": "law", "professional_medicine": "health",
    "professional_psychology": "psychology", "public_relations": "politics", "security_studies": "politics",
    "sociology": "culture", "us_foreign_policy": "politics", "virology": "health", "world_religions": "philosophy",
}


def category(subject: str) -> str:
    return _SUB[SUBCATEGORY[subject]] if subject in SUBCATEGORY else "other"


def score(logits: np.ndarray, answers: list[int], subjects: list[str]) -> dict:
    """logits [n, 4] and gold indices -> accuracy (mean over subjects, as the papers report), accuracy over all
    questions, and per category / per subject (each the mean over its subjects' accuracies)."""
    pred = np.asarray(logits).argmax(-1)
    correct = pred == np.asarray(answers)
    per_subject: dict[str, float] = {}
    for s in sorted(set(subjects)):
        m = np.asarray([x == s for x in subjects])
        per_subject[s] = float(correct[m].mean())
    cats: dict[str, list[float]] = {}
    for s, acc in per_subject.items():
        cats.setdefault(category(s), []).append(acc)
    return {
        "accuracy": float(np.mean(list(per_subject.values()))) if per_subject else float("nan"),
        "accuracy_questions": float(correct.mean()) if len(correct) else float("nan"),
        "per_category": {c: float(np.mean(v)) for c, v in sorted(cats.items())},
        "per_subject": per_subject,
        "questions": int(len(correct)),
        "predicted_distribution": {c: int((pred == i).sum()) for i, c in enumerate("ABCD")},
    }
