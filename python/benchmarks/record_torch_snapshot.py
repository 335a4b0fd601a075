"""Records a small PyTorch memory snapshot (``torch.cuda.memory._dump_snapshot``) of GPT-2 training
steps with varying sequence length, for gpuhal's trace replay (``cargo xtask replay FILE.pickle``).

    python3 record_torch_snapshot.py OUT.pickle [--steps N]

Stack frames are not recorded (``context=None``), so the file stays small.
"""

import argparse

import torch
from transformers import GPT2Config, GPT2LMHeadModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = GPT2Config(n_layer=4, n_embd=512, n_head=8, vocab_size=8192, n_positions=1024)
    torch.cuda.memory._record_memory_history(enabled="all", context=None, stacks="python", max_entries=200000)
    model = GPT2LMHeadModel(config).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for step, seq in enumerate([256, 768, 128, 512][: args.steps]):
        batch = torch.randint(0, config.vocab_size, (4, seq), device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        print(f"step {step}: seq {seq}, loss {loss.item():.4f}")
    torch.cuda.synchronize()
    torch.cuda.memory._dump_snapshot(args.out)
    torch.cuda.memory._record_memory_history(enabled=None)
    print(f"peak allocated {torch.cuda.max_memory_allocated()}, peak reserved {torch.cuda.max_memory_reserved()}")


if __name__ == "__main__":
    main()
