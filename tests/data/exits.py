import sys

from torch import nn

print("printed at import")
WHERE = __import__("os").environ.get("EXIT_AT", "")
if WHERE == "import":
    sys.exit(3)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        print("printed while building")
        if WHERE == "build":
            sys.exit(4)
        self.lin = nn.Linear(2, 2)

    def forward(self, x):
        print("printed in forward")
        if WHERE == "forward":
            sys.exit("bye")
        return self.lin(x)
