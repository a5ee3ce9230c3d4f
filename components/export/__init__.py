"""Export: the finetuned model as a plain transformers LlavaForConditionalGeneration folder, a parity check
against our evaluation path, and registration in the MLflow Model Registry (stage.run_export)."""
