"""Label Studio labeling config, generated from the taxonomy (never edited by hand)."""

from __future__ import annotations

from xml.sax.saxutils import quoteattr

from annotation.importers import MAIN_FIELD, SUB_FIELD
from common.taxonomy import Taxonomy

INSTRUCTIONS = (
    "Pick exactly ONE main style: the style the whole outfit reads as. "
    "Then tick every other style the outfit also shows (sub-styles); the main style is not repeated there."
)


def labeling_config(taxonomy: Taxonomy) -> str:
    """An image, a required single-choice main style and a multiple-choice sub-styles block."""

    def choices(indent: str) -> str:
        return "\n".join(
            f"{indent}<Choice value={quoteattr(label.name)}"
            + (f" hint={quoteattr(label.korean)}" if label.korean else "")
            + "/>"
            for label in taxonomy.labels
        )

    return f"""<View>
  <Header value={quoteattr(INSTRUCTIONS)} size="6"/>
  <View style="display: flex; gap: 24px; align-items: flex-start">
    <View style="flex: 0 0 40%">
      <Image name="image" value="$image" zoom="true" maxHeight="720px"/>
    </View>
    <View style="flex: 1">
      <Header value="Main style (exactly one)" size="5"/>
      <Choices name="{MAIN_FIELD}" toName="image" choice="single-radio" required="true" showInline="true">
{choices("        ")}
      </Choices>
      <Header value="Sub-styles (any number)" size="5"/>
      <Choices name="{SUB_FIELD}" toName="image" choice="multiple" showInline="true">
{choices("        ")}
      </Choices>
    </View>
  </View>
</View>
"""
