"""TRL's SFTTrainer with the loss computed where it is needed: the assistant's tokens, and nowhere else.

The labels already carry ``-100`` on every token that is not the assistant's (``train/data.py``). The stock
trainer still projects every position through the LM head (on GPUs TRL's fused head skips them; on CPU it
does not): for a 135M model with a 49k vocabulary that head is a fifth of the work at every position,
although only ~15 % of positions are the answer. Here the model is asked for logits only at the labelled
positions (``logits_to_keep`` with their indices), and the loss is the mean over those tokens of the whole
(gradient-accumulated, all-process) batch, exactly as ``Trainer`` normalises it.

Under ``value_weight`` (``weights.py``) batches carry ``loss_weights``: the loss is then the weighted mean
``sum(w_i * ce_i) / sum(w_i)`` over the batch's labelled tokens, its denominator the all-batch weight sum
(``_get_num_items_in_batch``, the weighted counterpart of the token count), so gradient accumulation and
several processes give the loss of the whole batch at once, as the plain mean does. Batches without the
column (every run with ``value_weight: 1``, and the validation split) take the plain path unchanged.

At each evaluation, with ``field_error`` given (``selection.py``), it also generates answers for a few
validation rows and adds their ``eval_field_error`` to the evaluation's metrics.

It also counts the tokens it trains on (for tokens/s) and notices a non-finite loss (for the NaN guard in
``callbacks.py``). With ``loraplus_lr_ratio`` set, its optimizer is PEFT's LoRA+ one: the optimizer the
arguments name (``optim``), with the LoRA B matrices at that multiple of the learning rate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from trl import SFTTrainer

from tuneloop.train.data import IGNORE_INDEX


@dataclass
class RunMonitor:
    """Shared between the trainer and its callbacks, per process."""

    tokens: int = 0  # input tokens trained on by this process since it started
    nonfinite: bool = False  # a training loss since the last optimizer step was NaN or infinite


WEIGHTS = "loss_weights"


class TuneloopSFTTrainer(SFTTrainer):
    def __init__(
        self,
        *args: Any,
        loraplus_lr_ratio: float | None = None,
        field_error: Callable[[torch.nn.Module], float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.monitor = RunMonitor()
        self.loraplus_lr_ratio = loraplus_lr_ratio
        self.field_error = field_error  # the model -> its field error on validation rows (main process)

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if self._signature_columns is not None and WEIGHTS not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, WEIGHTS]  # kept by remove_unused_columns

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | int | None:
        """The loss's denominator for the whole (accumulated, all-process) batch: the token count as Trainer
        counts it, or under loss weights the sum of the labelled tokens' weights, gathered the same way."""
        if not batch_samples or WEIGHTS not in batch_samples[0]:
            return super()._get_num_items_in_batch(batch_samples, device)
        if not (self.model_accepts_loss_kwargs or self.compute_loss_func is not None):
            return None  # Trainer would not count either (and then divides by the accumulation steps)
        total = sum(
            (batch[WEIGHTS][..., 1:] * batch["labels"][..., 1:].ne(IGNORE_INDEX)).sum() for batch in batch_samples
        )
        total = torch.as_tensor(total, dtype=torch.float32)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            total = self.accelerator.gather(total.to(device)).sum()
        elif self.args.n_gpu > 1:
            total = total / self.args.n_gpu
        return total.to(device) / (self.get_tp_size() * self.get_cp_size() * self.get_sp_size())

    def evaluation_loop(
        self,
        dataloader: Any,
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> Any:
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        # Only the main process generates (the others wait at the next collective); logs are its alone.
        if self.field_error is not None and metric_key_prefix == "eval" and self.is_world_process_zero():
            output.metrics["eval_field_error"] = self.field_error(self.accelerator.unwrap_model(self.model))
        return output

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        if self.loraplus_lr_ratio is None or self.optimizer is not None:
            return super().create_optimizer(model)
        from peft.optimizers import create_loraplus_optimizer

        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
        self.optimizer = create_loraplus_optimizer(
            model=self.model if model is None else model,
            optimizer_cls=optimizer_cls,
            loraplus_lr_ratio=self.loraplus_lr_ratio,
            loraplus_weight_decay=self.args.weight_decay,
            **optimizer_kwargs,  # lr and the optimizer's own settings (betas, eps, ...)
        )
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[override]
        mode = "train" if model.training else "eval"
        labels = inputs.pop("labels")
        weights = inputs.pop(WEIGHTS, None)
        inputs.pop("seq_idx", None)  # only for linear-attention layers
        # The examples' own tokens, a shared prefix counted once per example: the dataset's tokens trained on.
        example_tokens = inputs.pop("example_tokens", None)
        targets = labels[:, 1:]  # position p predicts token p + 1
        keep = (targets != IGNORE_INDEX).any(dim=0).nonzero().flatten()
        outputs = model(**inputs, use_cache=False, logits_to_keep=keep)
        logits = outputs.logits.float()  # (batch, kept, vocab)
        kept_targets = targets[:, keep]
        valid = kept_targets != IGNORE_INDEX
        count = valid.sum()
        if weights is None:
            loss_sum = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                kept_targets.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
            denominator = num_items_in_batch if num_items_in_batch is not None else count
        else:
            token_loss = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                kept_targets.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="none",
            ).reshape(kept_targets.shape)
            kept_weights = weights[:, 1:][:, keep].to(token_loss.dtype) * valid
            loss_sum = (token_loss * kept_weights).sum()
            denominator = num_items_in_batch if num_items_in_batch is not None else kept_weights.sum()
        loss = loss_sum / torch.as_tensor(denominator, device=loss_sum.device).clamp(min=1)
        # Trainer averages gradients over processes; a loss normalised by the all-process token count must
        # be scaled back up, as Trainer.compute_loss does.
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes

        with torch.no_grad():
            correct = ((logits.argmax(dim=-1) == kept_targets) & valid).sum()
            self._metrics[mode]["mean_token_accuracy"].append((correct / count.clamp(min=1)).item())
            if mode == "train":
                self.monitor.tokens += int(
                    example_tokens if example_tokens is not None else inputs["input_ids"].numel()
                )
                if not torch.isfinite(loss_sum):
                    self.monitor.nonfinite = True
        return (loss, outputs) if return_outputs else loss
