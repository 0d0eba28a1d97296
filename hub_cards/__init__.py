"""Model-card templates (Jinja), rendered with huggingface_hub's ModelCard.from_template."""

import os

MODEL_CARD_TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model_card.md")
