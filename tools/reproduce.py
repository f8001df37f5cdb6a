"""Reproduce the paper's three claims at small scale, end to end, with plots (docs/results.md).

    python tools/reproduce.py                                   # both CPU settings (about 73 min on 2 cores)
    python tools/reproduce.py --setting ptb                     # one of them
    python tools/reproduce.py --smoke --out /tmp/smoke          # the whole pipeline in seconds
    python tools/reproduce.py --setting wikitext2 --out runs/report_wikitext2   # GPT-2 scale-up, GPU
    python tools/reproduce.py --setting owt --out runs/report_owt               # the paper's scale, cluster

Settings are `configs/reproduce/<name>.toml`; runs go to runs/reproduce/<setting>/ and the report
to docs/results.md with figures in docs/figures/. Started again, it skips every finished stage
(the actual time of each stage is kept in runs/reproduce/<setting>/timings.json).
"""

# CPU budget, measured on 2 idle cores (torch 2.13 CPU, per-block torch.compile) on 2026-11-24; each
# stage's time is kept in runs/reproduce/<setting>/timings.json and summed in docs/results.md.
#   stage                       shakespeare (L = 128 chars)        ptb (L = 64 words, 10k vocabulary)
#   train ar      tiny          1000 steps   4.3 min                600 steps    2.9 min
#   train oracle  5 x 160       800 steps    6.4 min                600 steps    4.4 min
#   train mdlm    tiny          1500 steps   6.2 min                1000 steps   4.9 min
#   train nce     from the MDLM 300 steps    3.2 min                400 steps    3.1 min
#   eval          AR, MDLM, EDLM-NCE/AR/coAR at n = 8 and 16, 128 blocks
#                                            1.7 min                             6.4 min
#   sample        2 seeds x 32 samples; MDLM + {nce, ar} x k {2, 4} x w {0.2, 1}, 4 step counts
#                                            17.4 min                            11.8 min
#   score         oracle NLL per sample + reference   0.2 min                    0.2 min
#   total                                    39.4 min               +            33.7 min    = 73.1 min (< 90)

from edlm_dist.reproduce.cli import main

if __name__ == "__main__":
    main()
