"""``kb tune``: adapt kb's ranking to an index's own documents, offline (questions → negatives → training → gate).

Stages, one module each: ``questions`` (the local LLM writes questions for sampled chunks).
"""
