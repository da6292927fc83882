"""`lorakit eval`'s options: which model and adapter, on which data split, printed how."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lorakit.config import (
    ChosenColumn,
    DataFormat,
    InputColumn,
    InstructionColumn,
    LabelColumn,
    MessagesColumn,
    OutputColumn,
    Precision,
    PromptColumn,
    Quantize,
    RejectedColumn,
    ResponseColumn,
    StrictConfig,
    SystemColumn,
    TextColumn,
)


class EvalConfig(StrictConfig):
    """One evaluation (`lorakit eval --flag ...`); the fields are `evaluate()`'s arguments,
    except `as_json`. The data-reading fields (format, the columns) are TrainConfig's own
    declarations (lorakit.config), and evaluate() validates them as a TrainConfig."""

    model: str = Field("minilm", description="Base model.")
    adapter: str | None = Field(None, description="Adapter directory.")
    data: str = Field("tweets", description="tweets or a data file/directory.")
    task: str | None = Field(None, description="Default: the adapter's task.")
    # checked by evaluate(), which library callers use too
    split: str = Field("test", description="train, validation or test.")
    max_eval_samples: int | None = Field(
        None, gt=0, description="Evaluate on at most this many examples."
    )
    precision: Precision = "auto"
    quantize: Quantize = "none"
    format: DataFormat = "auto"
    text_column: TextColumn = None
    label_column: LabelColumn = None
    prompt_column: PromptColumn = None
    response_column: ResponseColumn = None
    messages_column: MessagesColumn = None
    chosen_column: ChosenColumn = None
    rejected_column: RejectedColumn = None
    instruction_column: InstructionColumn = None
    input_column: InputColumn = None
    output_column: OutputColumn = None
    system_column: SystemColumn = None
    objective: Literal["dpo", "orpo"] | None = Field(
        None,
        description=(
            "Preference data: how pairs are scored (rewards as that objective defines them). "
            "Default: the adapter's training objective if it was dpo or orpo, else dpo."
        ),
    )
    beta: float | None = Field(
        None,
        gt=0,
        description=(
            "Preference data: the reward scale (DPO's beta, ORPO's lambda). Default: the "
            "adapter's training value, else 0.1."
        ),
    )
    reference_adapter: str | None = Field(
        None,
        description=(
            "Preference data, dpo: the reference the rewards are measured against, an adapter "
            "directory (the SFT adapter a DPO run started from, to get the numbers training "
            "reported). Default: the base model with the adapter off."
        ),
    )
    compare_base: bool = Field(False, description="Also evaluate the base model, side by side.")
    as_json: bool = Field(False, description="Print JSON.")  # `json` would shadow BaseModel.json
