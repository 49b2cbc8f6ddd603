"""The names of h2oGPT's own command-line flags that have no meaning in this server.

h2oGPT's documented command lines (`python generate.py --score_model=None --db_type=chroma ...`)
must start `h2ogpt-api` unchanged, so each of these is accepted (as `--name value`, `--name=value`,
a bare `--name`, or `H2OGPT_<NAME>` / `h2ogpt_<name>` in the environment), warned about once by
name and ignored. The list is every parameter of h2oGPT's `src/gen.py` `main()` (h2oai/h2ogpt at
a0ad1920) except those `settings.py` gives a meaning (its fields, and the mapped flags
`concurrency_count`, `auth_filename`, `model_lock`, `db_type`).
"""

from __future__ import annotations

# One string of names, split: 338 names read and diff better as words than as a list literal.
IGNORED_H2OGPT_FLAGS = frozenset(
    """
    actions_in_sidebar add_chat_history_to_context add_disk_models_to_ui add_search_to_context
    admin_pass agent_port agent_server agent_workers all_docs_finish_prompt
    all_docs_start_prompt allow_api allow_chat_system_prompt allow_upload_to_my_data
    allow_upload_to_user_data answer_with_sources api_open append_sources_to_answer
    append_sources_to_chat asr_gpu asr_gpu_id asr_model asr_use_better asr_use_faster
    attention_sinks auth_freeze auth_message auto_reduce_chunks avatars block_gradio_exit
    blocked_paths caption_gpu caption_gpu_id captions_model cert_lookup_directory chat
    chat_conversation chat_tabless chat_template chatbot_role chunk clear_torch_cache_level cli
    cli_loop client_metadata close_button compile_model context cut_distance dark debug
    detect_user_path_changes_every_query display_name do_sample doc_json_mode docs_joiner
    docs_ordering_type docs_token_handling doctr_gpu doctr_gpu_id document_choice
    document_choice_in_sidebar document_content_substrings document_content_substrings_op
    document_source_substrings document_source_substrings_op document_subset early_stopping
    embedding_gpu_id enable_add_models_to_list_ui enable_caching enable_captions enable_doctr
    enable_heap_analytics enable_image enable_llava enable_llava_chat enable_ocr
    enable_pdf_doctr enable_pdf_ocr enable_pix2struct enable_sources_list enable_stt
    enable_text_upload enable_transcriptions enable_tts enable_url_upload enforce_h2ogpt_ui_key
    eval eval_as_output eval_filename eval_prompts_only_num eval_prompts_only_seed exllama_dict
    extra_allowed_paths extra_lora_options extra_model_options extra_server_options
    extract_frames fail_if_cannot_connect fail_if_invalid_client favicon_path
    force_langchain_evaluate force_seq2seq_type force_streaming_on_to_handle_timeouts
    force_t5_type function function_api_key function_server function_server_port
    function_server_workers google_auth gptq_dict gpu_id gradio_api_use_same_stream_limits
    gradio_errors_to_chatbot gradio_offline_level gradio_size gradio_ui_stream_chunk_min_seconds
    gradio_ui_stream_chunk_seconds gradio_ui_stream_chunk_size gradio_upload_to_chatbot
    gradio_upload_to_chatbot_num_max guided_choice guided_grammar guided_json guided_regex
    guided_whitespace_pattern h2ocolors h2ogpt_key headsize heap_app_id height hf_model_dict
    hyde_level hyde_llm_prompt hyde_show_intermediate_in_accordion hyde_show_only_final
    hyde_template iinput image_batch_final_prompt image_batch_image_prompt image_batch_stream
    image_control image_file image_format image_gpu_ids image_guidance_scale
    image_num_inference_steps image_quality image_resolution image_size images_num_max
    input_lines jq_schema json_code2_post_prompt_reminder json_code_post_prompt_reminder
    json_code_prompt json_code_prompt_if_no_schema json_object_post_prompt_reminder
    json_object_prompt json_object_prompt_simpler json_preserve_system_prompt
    json_schema_instruction keep_sources_in_context langchain_action langchain_agents
    langchain_instruct_mode langchain_mode_paths langchain_mode_types large_file_count_mode
    llamacpp_dict llamacpp_path llava_model llava_prompt load_4bit load_8bit load_awq
    load_db_if_exists load_exllama load_gptq load_half local_files_only login_mode_if_model0
    lora_weights low_bit_mode map_reduce_show_intermediate_in_accordion max_chunks
    max_input_tokens max_output_seq_len max_quality max_raw_chunks max_total_input_tokens
    max_visible_models memory_restriction_level metadata_in_context migrate_embedding_model
    min_max_new_tokens model_label_prefix model_lock_columns
    model_lock_layout_based_upon_initial_visible model_name_exllama_if_no_config
    model_name_gpt4all_llama model_name_gptj model_path_llama multiple_workers_gunicorn n_gpus
    n_jobs num_beams num_return_sequences offload_folder open_browser page_title
    pdf_height penalty_alpha pre_load_embedding_model pre_load_image_audio_models
    pre_prompt_query pre_prompt_summary prepare_offline_level prompt_dict prompt_query
    prompt_summary regenerate_clients regenerate_gradio_clients reload_langchain_state
    render_markdown response_format resume_download reviews_file revision root_path rope_scaling
    rotate_align_resize_image sanitize_bot_response sanitize_user_prompt score_model seed share
    show_copy_button show_examples show_gpt4all show_link_in_sources show_llama show_lora
    shutdown_via_api sink_dict sources_show_text_in_accordion speaker src_lang ssl_certfile
    ssl_keyfile ssl_keyfile_password ssl_verify sst_floor stream_map stream_output
    stt_continue_mode stt_gpu stt_gpu_id stt_model system_api_open text_context_list tgt_lang
    tokenizer_base_model top_k_docs_max_show truncation_generation trust_remote_code
    try_pdf_as_html tts_action_phrases tts_coquiai_deepspeed tts_coquiai_roles tts_gan_model
    tts_gpu tts_gpu_id tts_language tts_model tts_speed tts_stop_phrases
    update_selection_state_from_cli use_auth_token use_autogptq use_cache use_flash_attention_2
    use_gpu_id use_llm_if_no_docs use_openai_embedding use_openai_model use_playwright
    use_pymupdf use_pypdf use_safetensors use_scrapehttp use_scrapeplaywright use_selenium
    use_unstructured use_unstructured_pdf user_prompt_for_fake_system_prompt validate_clients
    verbose verifier_inference_server verifier_model verifier_tokenizer_base_model video_file
    video_frame_period visible_add_doc_to_chat visible_all_prompter_models
    visible_ask_anything_high visible_chat_history visible_chat_history_tab visible_chat_tab
    visible_chatbot_label visible_curated_models visible_doc_selection_tab visible_doc_track
    visible_doc_view_tab visible_document_subset visible_expert_tab visible_h2ogpt_links
    visible_h2ogpt_logo visible_h2ogpt_qrcode visible_hosts_tab visible_image_models
    visible_langchain_action_radio visible_langchain_actions visible_langchain_agents
    visible_langchain_purge visible_login_tab visible_max_quality visible_models
    visible_models_tab visible_ratings visible_side_bar visible_submit_buttons
    visible_system_tab visible_tos_tab visible_visible_models visible_vision_models
    """.split()  # noqa: SIM905
)
