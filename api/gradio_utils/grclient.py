"""h2oGPT's import path for its client wrapper: `from gradio_utils.grclient import GradioClient`."""

from h2ogpt_client import GradioClient, H2oGPTClientError

__all__ = ["GradioClient", "H2oGPTClientError"]
