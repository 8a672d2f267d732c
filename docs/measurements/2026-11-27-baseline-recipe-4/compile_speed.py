import time, torch, torchvision, sys
torch.set_num_threads(2)
torch.manual_seed(0)
m = torchvision.models.resnet18(num_classes=20).to(memory_format=torch.channels_last)
opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True)
crit = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
mode = sys.argv[1]
fwd = m
if mode != "eager":
    fwd = torch.compile(m, mode=None if mode == "default" else mode)
def step(s=64):
    x = torch.randn(128, 3, s, s).to(memory_format=torch.channels_last); y = torch.randint(0, 20, (128,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = crit(fwd(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
t = time.perf_counter(); step(); step(); print("first two", time.perf_counter() - t, flush=True)
ts = []
for r in range(4):
    t = time.perf_counter()
    for _ in range(5): step()
    ts.append((time.perf_counter() - t) / 5)
print(mode, [f"{x:.3f}" for x in ts])
