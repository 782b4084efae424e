"""The figures published by Li, Bradshaw & Sharma (ICML 2019) for DFZ and GFZ, shown beside ours."""

ACCURACY = {"DFZ": 0.8891, "GFZ": 0.8081}
# seconds per attack (their hardware), success rate, robustness rho, detection rate at 5% FPR
RUNTIME = {"fgsm": (0.3, 1.5), "deepfool": (1.7, 4.2), "truncated-deepfool": (3.2, 3.7), "cw": (26.3, 24.2),
           "zoo": (22.0, 23.5)}
SUCCESS = {"fgsm": (0.2140, 0.3734), "deepfool": (0.4927, 0.5560)}
ROBUSTNESS = {"fgsm": (0.4615, 0.6138), "deepfool": (0.1159, 0.1477)}
DETECTION = {"fgsm": (0.6843, 0.9947), "deepfool": (0.0875, 0.0949)}


def pair(table: dict, attack: str) -> str:
    v = table.get(attack)
    return f"{v[0]} / {v[1]}" if v else "–"
