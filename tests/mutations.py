"""Mutation check: do the tests fail when the code breaks?

    python tests/mutations.py              # every mutant
    python tests/mutations.py lora grad    # mutants whose name contains one of the words
    python tests/mutations.py --list
    python tests/mutations.py --baseline   # first check the unmutated copy passes them

Copies src/, tests/, examples/ and pyproject.toml to a temporary directory, then for
each mutant (a deliberate breakage: exact string replacements in named files, each
asserted to occur exactly once) writes the broken file, runs only the tests that should
catch it against the copy (PYTHONPATH=COPY/src, also for the subprocesses the tests
start), and restores the file. A mutant is killed when pytest reports failures or
errors; it survives when they pass. Prints the survivors and exits 1 if there are any.
Not collected by pytest (the name does not start with test_).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN_REF = "tests/test_train_reference.py"


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # under src/instructkit/
    edits: tuple[tuple[str, str], ...]  # (old, new), each old occurring exactly once
    tests: tuple[str, ...]  # pytest node ids or files, relative to the root


def mutant(name: str, path: str, old: str, new: str, *tests: str) -> Mutant:
    return Mutant(name, path, ((old, new),), tests)


MUTANTS = [
    # ---- the training loop (issue 12's list) -------------------------------------------
    mutant(
        "mask_prompt never reaches the collator",
        "train/loop.py",
        "mask_prompt=config.mask_prompt,",
        "mask_prompt=False,",
        f"{TRAIN_REF}::test_mask_prompt_and_bf16_flags_reach_the_step",
    ),
    mutant(
        "bf16 autocast stays off",
        "train/loop.py",
        "autocast=torch.autocast(device.type, torch.bfloat16, enabled=bf16)",
        "autocast=torch.autocast(device.type, torch.bfloat16, enabled=False)",
        f"{TRAIN_REF}::test_mask_prompt_and_bf16_flags_reach_the_step",
    ),
    mutant(
        "bf16 autocast always on",
        "train/loop.py",
        "autocast=torch.autocast(device.type, torch.bfloat16, enabled=bf16)",
        "autocast=torch.autocast(device.type, torch.bfloat16, enabled=True)",
        f"{TRAIN_REF}::test_step_gradient_is_autograd_of_the_token_mean",
    ),
    mutant(
        "LoRA scale is alpha (the book's first printing), not alpha / rank",
        "model/lora.py",
        "return self.alpha / self.rank",
        "return self.alpha",
        "tests/test_lora.py",
    ),
    mutant(
        "LoRA alpha and rank swapped in the loop",
        "train/loop.py",
        "apply_lora(model, config.lora_rank, config.lora_alpha)",
        "apply_lora(model, int(config.lora_alpha), float(config.lora_rank))",
        "tests/test_cli_finetune.py",
        "tests/test_train.py",
    ),
    Mutant(
        "epoch-boundary resume restores the RNG after opening the epoch",
        "train/state.py",
        (
            (
                "    if rng is not None and position.batch_index == 0:\n        set_rng_state(rng)\n",
                "",
            ),
            ("if rng is not None and position.batch_index > 0:", "if rng is not None:"),
        ),
        (f"{TRAIN_REF}::test_resume_from_an_epoch_boundary_is_bitwise_an_uninterrupted_run",),
    ),
    mutant(
        "step loss divided by the token count twice",
        "train/steps.py",
        "scale = info.world_size / max(step_units, 1.0)",
        "scale = info.world_size / max(step_units, 1.0) ** 2",
        f"{TRAIN_REF}::test_step_gradient_is_autograd_of_the_token_mean",
    ),
    mutant(
        "DDP's average over ranks not undone",
        "train/steps.py",
        "scale = info.world_size / max(step_units, 1.0)",
        "scale = 1.0 / max(step_units, 1.0)",
        f"{TRAIN_REF}::test_ddp_step_gradient_is_autograd_of_the_token_mean",
    ),
    mutant(
        "token counts not summed across ranks",
        "train/steps.py",
        "step_units, step_records = distributed.sum_across([local_units, local_records], info, device)",
        "step_units, step_records = local_units, local_records",
        f"{TRAIN_REF}::test_ddp_step_gradient_is_autograd_of_the_token_mean",
    ),
    mutant(
        "the book's mean per micro-batch instead of per step",
        "train/steps.py",
        "(batch_loss * scale).backward()",
        "(batch_loss / max(units(batch), 1.0) / len(micro)).backward()",
        f"{TRAIN_REF}::test_step_gradient_is_autograd_of_the_token_mean",
    ),
    mutant(
        "--grad-clip ignored",
        "train/loop.py",
        "torch.nn.utils.clip_grad_norm_(params, run.config.grad_clip)",
        "pass",
        f"{TRAIN_REF}::test_grad_clip_clips_like_torch",
    ),
    mutant(
        "--no-group-by-length ignored",
        "train/loop.py",
        '"group_by_length": config.group_by_length,',
        '"group_by_length": True,',
        f"{TRAIN_REF}::test_group_by_length_and_its_opposite_reach_the_loader",
    ),
    mutant(
        "length grouping never on",
        "train/loop.py",
        '"group_by_length": config.group_by_length,',
        '"group_by_length": False,',
        f"{TRAIN_REF}::test_group_by_length_and_its_opposite_reach_the_loader",
    ),
    mutant(
        "precision auto ignores a CPU's native bf16",
        "train/loop.py",
        'return device.type == "cuda" or (device.type == "cpu" and loading.cpu_has_native_bf16())',
        'return device.type == "cuda"',
        "tests/test_train.py::test_precision_auto_follows_the_cpus_bf16",
    ),
    mutant(
        "finetune's leakage check compares the validation split twice, never the test split",
        "data/leakage.py",
        'evaluation = {"test": [comparable(r) for r in test], "val": [comparable(r) for r in val]}',
        'evaluation = {"test": [comparable(r) for r in val], "val": [comparable(r) for r in val]}',
        "tests/test_train.py::test_finetune_warns_when_test_records_copy_training_records",
    ),
    mutant(
        "dpo resumes on changed pairs",
        "train/dpo.py",
        "        check_fingerprint(Path(config.out), fingerprint, config.data)",
        "        pass",
        "tests/test_cli_dpo.py::test_resume_on_changed_pairs_is_refused_and_a_diverged_run_leaves_nothing",
    ),
    mutant(
        "--compile ignored",
        "train/loop.py",
        "return torch.compile(objective) if config.compile else objective",
        "return objective",
        f"{TRAIN_REF}::test_compile_flag_compiles_the_module_that_trains",
    ),
    mutant(
        "log_every ignored (a row every step)",
        "train/loop.py",
        "position.step % run.config.log_every == 0",
        "position.step % 1 == 0",
        f"{TRAIN_REF}::test_resume_from_an_epoch_boundary_is_bitwise_an_uninterrupted_run",
    ),
    mutant(
        "a divergence is an internal error (exit 1)",
        "train/stopping.py",
        "class DivergedError(UserError):",
        "class DivergedError(RuntimeError):",
        "tests/test_cli_contract.py::test_a_diverging_finetune_exits_2_with_one_line",
    ),
    Mutant(
        "an internal failure reported as a user error (exit 2)",
        "cli.py",
        (
            ("except UserError as error:", "except Exception as error:"),
            (
                "print_problems(error.problems)",
                "print_problems(getattr(error, 'problems', [str(error)]))",
            ),
        ),
        ("tests/test_cli_contract.py::test_an_internal_failure_exits_1_with_its_traceback",),
    ),
    # ---- commands -----------------------------------------------------------------------
    mutant(
        "evaluate --api-key-env ignored",
        "commands/evaluate.py",
        "os.environ.get(args.api_key_env)",
        'os.environ.get("OPENAI_API_KEY")',
        "tests/test_cli_evaluate.py::test_api_key_env_names_the_variable_whose_key_is_sent",
    ),
    mutant(
        "serve listens on every interface by default",
        "commands/serve.py",
        'default="127.0.0.1"',
        'default="0.0.0.0"',
        "tests/test_serve.py::test_serve_command_loads_a_run_and_refuses_a_busy_port",
    ),
    mutant(
        "batched rows attend to their left padding",
        "serve/batching.py",
        "cache.segment_ids = (columns[None, :] >= starts[:, None]).long()  # (B, S)",
        "cache.segment_ids = None",
        "tests/test_serve_batching.py::test_requests_join_mid_flight_leave_when_done_and_decode_as_alone",
    ),
    mutant(
        "batched rows share one position",
        "serve/batching.py",
        "positions = torch.tensor([[job.length] for job in jobs], device=device)  # (B, 1)",
        "positions = torch.tensor([[jobs[0].length] for job in jobs], device=device)  # (B, 1)",
        "tests/test_serve_batching.py::test_requests_join_mid_flight_leave_when_done_and_decode_as_alone",
    ),
    mutant(
        "a cancelled request keeps its row",
        "serve/batching.py",
        "cancelled = [i for i, job in enumerate(self.active) if job.cancelled]",
        "cancelled = []",
        "tests/test_serve_batching.py::test_a_cancelled_request_frees_its_row_at_the_next_step",
    ),
    mutant(
        "batched requests sample from the global generator, not their own",
        "serve/batching.py",
        "row_logits, config.temperature, config.top_k, config.top_p, job.generator",
        "row_logits, config.temperature, config.top_k, config.top_p, None",
        "tests/test_serve_batching.py::test_each_request_keeps_its_sampling_settings_seed_and_stop_ids",
    ),
    mutant(
        "the decode thread outlives the interpreter",
        "serve/batching.py",
        "atexit.register(self.close)",
        "pass",
        "tests/test_serve_batching.py::"
        "test_a_process_that_never_closes_its_engine_ends_the_decode_thread_before_exit",
    ),
    mutant(
        "--help shows no defaults",
        "commands/__init__.py",
        "return super()._get_help_string(action)",
        "return action.help",
        "tests/test_serve.py::test_help_shows_defaults",
    ),
    mutant(
        "data inspect --show-labels marks the prompt's last target as prompt",
        "data/stats.py",
        'rows.append(LabelledTarget(position, token, target, "train" if trained else "prompt"))',
        'rows.append(LabelledTarget(position, token, target, "train" if trained and '
        'masked.targets[0, position - 1].item() != IGNORE_INDEX else "prompt"))',
        "tests/test_cli_data.py::test_show_labels_and_plot",
    ),
    mutant(
        "a broken data.builtin module",
        "data/builtin.py",
        "from __future__ import annotations\n",
        "from __future__ import annotations\n\nraise ImportError('broken on purpose')\n",
        "tests/test_cli_data.py",
    ),
    mutant(
        "the built-in data trains every family equally (Family.train_records ignored)",
        "data/builtin.py",
        "for key in _train_keys(train_pool, rng, family.train_records):",
        "for key in _train_keys(train_pool, rng, TRAIN_PER_FAMILY):",
        "tests/test_builtin.py",
    ),
    mutant(
        "loss.png's tokens axis is a twin y-axis",
        "plots.py",
        "tokens_axis = axis.twiny()",
        "tokens_axis = axis.twinx()",
        "tests/test_plots.py",
    ),
    mutant(
        "loss.png without the tokens-seen label",
        "plots.py",
        'tokens_axis.set_xlabel("Pairs seen" if margins else "Tokens seen")',
        "pass",
        "tests/test_plots.py",
    ),
    # ---- the GPT-2 vocabulary, the dataset, collate and packing -------------------------
    mutant(
        "GPT-2's contraction rule dropped from the split pattern",
        "tokenizer.py",
        r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++""",
        r""" ?\p{L}++""",
        "tests/test_gpt2_vocab.py",
    ),
    mutant(
        "prompt length off by one",
        "data/dataset.py",
        "return Example(ids, shared)",
        "return Example(ids, shared + 1)",
        "tests/test_dataset.py",
        f"{TRAIN_REF}::test_step_gradient_is_autograd_of_the_token_mean",
    ),
    mutant(
        "book collate ignores the end-of-text target too",
        "data/collate.py",
        "masked_fill_(~real[:, :-1], ignore_index)",
        "masked_fill_(~real[:, 1:], ignore_index)",
        "tests/test_collate.py",
    ),
    mutant(
        "collator: an example's last target is the next example's first token",
        "data/collate.py",
        "targets[ends] = self.pad_token_id",
        "targets[-1] = self.pad_token_id",
        "tests/test_collate.py",
    ),
    mutant(
        "collator masks the prompt's last target (the response's first token)",
        "data/collate.py",
        "return max(example.prompt_length - 1, 0)",
        "return max(example.prompt_length, 0)",
        "tests/test_collate.py",
    ),
    mutant(
        "Batch.pin_memory pins nothing",
        "data/collate.py",
        "return self._map(lambda tensor: tensor.pin_memory())",
        "return self._map(lambda tensor: tensor)",
        "tests/test_collate.py::test_batch_to_and_pin_memory_keep_metadata",
    ),
    mutant(
        "packed positions do not restart per example",
        "data/collate.py",
        "positions = torch.arange(len(ids)) - torch.repeat_interleave(starts, lengths)",
        "positions = torch.arange(len(ids)) - starts[0]",
        "tests/test_collate.py",
    ),
    mutant(
        "packing overfills rows",
        "data/sampling.py",
        "if length <= free:",
        "if length <= free + 1:",
        "tests/test_sampling.py",
    ),
    mutant(
        "packed attention crosses examples",
        "model/gpt.py",
        "return (same & causal).unsqueeze(1)  # (B, 1, T, S)",
        "return (causal | same & causal).unsqueeze(1)  # (B, 1, T, S)",
        "tests/test_model.py",
    ),
    # ---- the judge's retries ------------------------------------------------------------
    mutant(
        "judge: a 5xx is not retried",
        "evaluate/judge.py",
        "if response.status_code >= 500 or response.status_code == 429:",
        "if response.status_code == 429:",
        "tests/test_judge.py",
    ),
    mutant(
        "judge: a 4xx is retried",
        "evaluate/judge.py",
        "if response.status_code >= 500 or response.status_code == 429:",
        "if response.status_code >= 400 and response.status_code not in (401, 403, 404):",
        "tests/test_judge.py",
    ),
    mutant(
        "judge: one attempt fewer",
        "evaluate/judge.py",
        "attempts = self.retry.retries + 1",
        "attempts = self.retry.retries",
        "tests/test_judge.py",
    ),
    mutant(
        "judge: dropped connections are not retried",
        "evaluate/judge.py",
        'failure = JudgeRequestError(f"connection broken: {type(error).__name__}: {error}")',
        'raise JudgeRequestError(f"connection broken: {type(error).__name__}: {error}")',
        "tests/test_judge.py",
    ),
    # ---- the server's error handling ----------------------------------------------------
    mutant(
        "server: a prompt that fills the context is a 500, not a 400",
        "serve/requests.py",
        "raise APIError(400, error.message, error.param, error.code) from None",
        "raise APIError(500, error.message, error.param, error.code) from None",
        "tests/test_serve.py",
    ),
    mutant(
        "server: a failure mid-stream drops the connection",
        "serve/requests.py",
        'yield error_chunk(f"generation failed: {type(error).__name__}: {error}")',
        "raise",
        "tests/test_serve.py::test_a_failure_mid_stream_ends_with_an_error_event",
    ),
    mutant(
        "server: malformed JSON is a 500",
        "serve/requests.py",
        'raise APIError(400, f"the request body is not valid JSON: {error}") from None',
        'raise APIError(500, f"the request body is not valid JSON: {error}") from None',
        "tests/test_serve.py::test_malformed_json_and_unknown_routes",
    ),
    mutant(
        "word pieces: GPT-2 pre-tokenization kept",
        "tokenizer.py",
        "    if word_pieces:\n",
        "    if False:\n",
        "tests/test_tokenizer.py::test_word_pieces_spell_a_word_the_same_wherever_it_stands",
    ),
    # ---- session 7: the demo's time ----------------------------------------------------
    mutant(
        "step-0 training loss reads eval_batches of the training split",
        "train/loop.py",
        "batches = max(1, min(run.config.eval_batches, len(run.val_loader)))",
        "batches = run.config.eval_batches",
        "tests/test_train.py::test_initial_losses_read_as_many_training_batches_as_the_validation_split_has",
    ),
    mutant(
        "demo threads wait passively on idle cores too",
        "host.py",
        "if busy is None or busy >= BUSY_CORES:",
        "if True:",
        "tests/test_host.py",
    ),
    mutant(
        "demo threads spin when another process holds a core",
        "host.py",
        "if busy is None or busy >= BUSY_CORES:",
        "if busy is None:",
        "tests/test_host.py",
    ),
    mutant(
        "busy cores count iowait as work",
        "host.py",
        "idle = delta[3] + delta[4]",
        "idle = delta[3]",
        "tests/test_host.py",
    ),
    mutant(
        "demo --precision bf16 trains more steps than the measured plan",
        "demo.py",
        "return dataclasses.replace(QUICK if quick else FULL, precision=precision)",
        "plan = QUICK if quick else FULL\n"
        "    steps = plan.max_steps * (2 if precision == 'bf16' else 1)\n"
        "    return dataclasses.replace(plan, precision=precision, max_steps=steps)",
        "tests/test_demo.py::test_one_measured_plan_on_every_cpu",
    ),
    mutant(
        "report.md keeps the untrained model's control characters",
        "demo_report.py",
        'text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)',
        "",
        "tests/test_demo.py::test_report_cells_escape_control_characters",
    ),
]


def copy_project(target: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in ("src", "tests", "examples"):
        shutil.copytree(ROOT / name, target / name, ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", target / "pyproject.toml")


def apply(mutant: Mutant, copy: Path) -> str:
    """Write the mutated file into the copy; return the original text."""
    path = copy / "src" / "instructkit" / mutant.path
    original = path.read_text(encoding="utf-8")
    text = original
    for old, new in mutant.edits:
        count = text.count(old)
        if count != 1:
            raise SystemExit(f"{mutant.name}: {old!r} occurs {count} times in {mutant.path}")
        text = text.replace(old, new)
    path.write_text(text, encoding="utf-8")
    return original


def run_tests(mutant: Mutant, copy: Path, env: dict) -> tuple[int, str]:
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *mutant.tests]
    done = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, check=False)
    return done.returncode, done.stdout + done.stderr


def main(argv: list[str]) -> int:
    if "--list" in argv:
        for m in MUTANTS:
            print(f"{m.name}  [{m.path}]")
        return 0
    baseline = "--baseline" in argv
    words = [word for word in argv if not word.startswith("--")]
    chosen = [m for m in MUTANTS if not words or any(w.lower() in m.name.lower() for w in words)]
    sys.path.insert(0, str(ROOT / "tests"))
    from shared_data import SHARED_DATA

    survivors, errors = [], []
    with tempfile.TemporaryDirectory(prefix="instructkit-mutants-") as directory:
        copy = Path(directory)
        copy_project(copy)
        env = {
            **os.environ,
            "PYTHONPATH": str(copy / "src"),
            "INSTRUCTKIT_SHARED_DATA": str(SHARED_DATA),  # the copy lies elsewhere
            "OMP_NUM_THREADS": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        if baseline:  # the chosen tests pass on the unmutated copy (minutes: opt-in)
            tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
            code, output = run_tests(Mutant("unmutated", "", (), tests), copy, env)
            if code != 0:
                print(output[-3000:])
                print("the unmutated copy fails its tests: fix that first")
                return 2
        for m in chosen:
            original = apply(m, copy)
            started = time.perf_counter()
            try:
                code, output = run_tests(m, copy, env)
            finally:
                (copy / "src" / "instructkit" / m.path).write_text(original, encoding="utf-8")
            seconds = time.perf_counter() - started
            verdict = {0: "SURVIVED", 1: "killed", 2: "killed"}.get(code, f"ERROR (pytest {code})")
            print(f"{verdict:10} {seconds:6.1f}s  {m.name}", flush=True)
            if code == 0:
                survivors.append(m.name)
            elif code not in (1, 2):
                errors.append(m.name)
                print(output[-2000:])
    print(f"\n{len(chosen)} mutants: {len(chosen) - len(survivors) - len(errors)} killed, "
          f"{len(survivors)} survived, {len(errors)} errors")  # fmt: skip
    for name in survivors:
        print(f"  survived: {name}")
    return 1 if survivors or errors else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
