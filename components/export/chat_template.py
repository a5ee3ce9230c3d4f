"""The vicuna_v1 conversation template as a Jinja chat template, for `processor.apply_chat_template`.

It renders exactly what components/core/templates.py renders (reference §3.2, TWO separator style):
`{system} USER: <image>\\n{q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT:`. Images in a user turn are
placed at its start, each followed by a newline, as the reference's preprocess_multimodal does. A leading
system message replaces the default system prompt. No BOS in the text: the processor's tokenizer adds it.

Kept in Python (not a .jinja file) so the export stage's code fingerprint covers it.
"""

from __future__ import annotations

from components.core.templates import VICUNA_SYSTEM, TemplateName

_TEXT_OF = (
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for item in message['content'] if item['type'] == 'text' -%}{{- item['text'] -}}"
    "{%- endfor -%}{%- endif -%}"
)

VICUNA_V1_CHAT_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set message = messages[0] -%}{%- set system -%}" + _TEXT_OF + "{%- endset -%}"
    "{%- set turns = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system = " + repr(VICUNA_SYSTEM) + " -%}{%- set turns = messages -%}"
    "{%- endif -%}"
    "{{- system + ' ' -}}"
    "{%- for message in turns -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{- 'USER: ' -}}"
    "{%- if message['content'] is not string -%}"
    "{%- for item in message['content'] if item['type'] == 'image' -%}{{- '<image>\\n' -}}{%- endfor -%}"
    "{%- endif -%}" + _TEXT_OF + "{{- ' ' -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- 'ASSISTANT: ' -}}" + _TEXT_OF + "{{- eos_token -}}"
    "{%- else -%}"
    "{{- raise_exception('vicuna_v1 chat template: unknown role ' + message['role']) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)


def chat_template(template: TemplateName) -> str:
    """The Jinja chat template for a conversation template the finetuned model was trained with."""
    if template != "vicuna_v1":
        raise ValueError(
            f"evaluate.template={template!r}: only vicuna_v1 has a chat template for export "
            "(a plain-template model answers only captions; export the finetuned vicuna_v1 model)"
        )
    return VICUNA_V1_CHAT_TEMPLATE
