"""The HTTP service (`mmtags serve`): FastAPI app over a model, the tag store and the feedback store."""
