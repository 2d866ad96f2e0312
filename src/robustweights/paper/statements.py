"""The paper's claims in words: each claim's statement and figure, and each rule's text.

:data:`CLAIMS` holds, per claim, the paper's statement and the figure it quotes; the ``RULE_*``
texts say how :mod:`.claims` judges a claim, in the words the claims table prints beside each
verdict (docs/method.md section 5a). The rules themselves, as code, are :mod:`.claims`'.
"""

CLAIMS = {
    1: (
        "Networks trained with binarized weights are, at test time, robust to additive noise, "
        "multiplicative noise and non-linear projections (binarization a special case).",
        "qualitative: binarization-trained networks degrade far more slowly than float-trained "
        "ones",
    ),
    2: (
        "One such network reaches 11% test error on CIFAR-10 with 0.68 effective bits per weight.",
        "11% test error at 0.68 bits per weight (CIFAR-10)",
    ),
    3: (
        "Using projected weights in back-propagation can be altered (fwd) or removed (clip only) "
        "and networks keep a base level of robustness; projections other than quantization also "
        "work.",
        "qualitative: fwd and clip-only networks keep a base level of robustness",
    ),
    4: (
        "The results hold on CIFAR-10 and on ImageNet.",
        "CIFAR-10 and ImageNet (AlexNet/GoogLeNet-scale)",
    ),
    5: (
        "A stochastic projection rule gives 7.64% test error on CIFAR-10 with no data "
        "augmentation.",
        "7.64% test error (BinaryConnect: 9.90% deterministic, 8.27% stochastic)",
    ),
}

RULE_1 = (
    "headline convention: additive noise relative to each layer's range (add-gauss scale=max, the "
    "paper's most likely reference) at sigma 0.8, on the weights each network runs with. "
    "Reproduced when both BinaryConnect networks (sign, tested with its binary weights; "
    "stoch-sign, tested with its hidden weights) degrade far more slowly than the float network: "
    "under that noise each one's error rise is at most half the float network's, and in no other "
    "column (noise relative to std(W), mult-gauss, power, sign, quant, each at its reference "
    "strength) is either 'not slower' (a column where both rise under 2 points shows nothing and "
    "is skipped). Every rise is reported, a noise column's with the effective bits it measured"
)
RULE_2 = (
    "the lowest effective bits per weight (measured, docs/method.md section 4) at which a network "
    "trained with binarized weights (sign, stoch-sign or sign-fwd) keeps its mean test error at "
    "or below the target, at that strength and every weaker one of the same distortion; "
    "reproduced at the paper's setting when it is at most 0.68 bits at 11%"
)
RULE_4 = (
    "headline convention as claim 1: additive noise relative to each layer's range (add-gauss "
    "scale=max) at sigma 0.8. Reproduced when the sign network's error rise there is at most half "
    "the float network's, and relative to std(W) it is not 'not slower' (both rises are reported)"
)
RULE_3 = (
    "reproduced when the clip-only, sign-fwd, power and stoch-mult networks each train to within "
    "5 points of the float network's error and rise less than it under additive noise at sigma "
    "0.8 relative to both std(W) and max|W| and under mult-gauss sigma 0.5, each tested with the "
    "weights it runs with"
)
