"""The Gradio front door: service <- (UI, h2oGPT api_names) <- app."""
