"""`GradioClient`: h2oGPT's client wrapper (`question`, `query`, `summarize`, `extract`) on `gradio_client`.

It speaks h2oGPT's Gradio API (`/submit_nochat_api`, `/add_text`, `/add_url`, `/upload_api`,
`/add_file_api`, `/model_names`), so it works against `h2ogpt-api` and against h2oGPT itself.
"""

from h2ogpt_client.client import DEFAULT_LANGCHAIN_MODE, GradioClient, H2oGPTClientError

__all__ = ["DEFAULT_LANGCHAIN_MODE", "GradioClient", "H2oGPTClientError"]
