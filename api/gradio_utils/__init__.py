"""h2oGPT's `gradio_utils` package name, so `from gradio_utils.grclient import GradioClient` works."""
