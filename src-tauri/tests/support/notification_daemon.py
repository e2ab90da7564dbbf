"""A stand-in for the desktop's notification centre: it owns org.freedesktop.Notifications on
the session bus (the name every Linux notification daemon owns) and writes one JSON line per
Notify call to the file given as its argument. Tests read the file to see what the person
would have seen."""

import asyncio
import json
import sys

from dbus_next.aio import MessageBus
from dbus_next.service import ServiceInterface, method


class Notifications(ServiceInterface):
    def __init__(self, out):
        super().__init__("org.freedesktop.Notifications")
        self.out = out
        self.next_id = 1

    @method()
    def Notify(self, app_name: "s", replaces_id: "u", app_icon: "s", summary: "s",
               body: "s", actions: "as", hints: "a{sv}", expire_timeout: "i") -> "u":
        with open(self.out, "a") as f:
            f.write(json.dumps({"app": app_name, "summary": summary, "body": body}) + "\n")
        self.next_id += 1
        return self.next_id - 1

    @method()
    def GetCapabilities(self) -> "as":
        return ["body"]

    @method()
    def GetServerInformation(self) -> "ssss":
        return ["jarvis-test", "my-jarvis", "1", "1.2"]

    @method()
    def CloseNotification(self, id: "u"):
        return None


async def main():
    bus = await MessageBus().connect()
    bus.export("/org/freedesktop/Notifications", Notifications(sys.argv[1]))
    await bus.request_name("org.freedesktop.Notifications")
    print("notification daemon ready", flush=True)
    await asyncio.get_running_loop().create_future()


asyncio.run(main())
