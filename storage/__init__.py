"""Storage: the catalog (SQLAlchemy) and the derived FAISS index. Knows nothing of models or HTTP."""
