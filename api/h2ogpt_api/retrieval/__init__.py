"""Document retrieval: embeddings, the Weaviate store, ingestion."""
