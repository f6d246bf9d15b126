"""Answers from the photos: `imgrag ask` and `imgrag search --verify`.

- `answer`: retrieve the photos a question is about, stream the chat model's answer, map its
  citations back to photos;
- `verify`: the chat model keeps only the hits that match (verdicts cached);
- `prompts`: what is sent (descriptions are data, never instructions);
- `photo_briefs`: what the model is told about each retrieved photo.
"""
