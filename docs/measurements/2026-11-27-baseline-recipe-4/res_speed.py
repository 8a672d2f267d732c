import time, torch, torchvision, sys
torch.set_num_threads(int(sys.argv[1]))
m = torchvision.models.resnet18(num_classes=20).to(memory_format=torch.channels_last)
opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True)
crit = torch.nn.CrossEntropyLoss()
def step(s):
    x = torch.randn(128, 3, s, s).to(memory_format=torch.channels_last); y = torch.randint(0, 20, (128,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = crit(m(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
res = {}
for rnd in range(3):
  for s in (32, 40, 48, 56, 64):
    step(s)
    t = time.perf_counter()
    for _ in range(5): step(s)
    res.setdefault(s, []).append((time.perf_counter() - t) / 5)
for s, v in res.items():
    print(s, f"{min(v):.3f} s/step", f"ratio {min(v)/min(res[64]):.2f}", f"pixels {(s/64)**2:.2f}")
