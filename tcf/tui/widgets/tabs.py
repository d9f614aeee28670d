"""The tab bar on top of every screen: click a tab or press its number to switch screens."""

from __future__ import annotations

from textual.widgets import Tab, Tabs

SCREENS = (("queue", "1 Queue"), ("live", "2 Live"), ("results", "3 Results"))


class ScreenTabs(Tabs):
    """Tabs that switch the app's mode; ``active`` is the mode of the screen that shows them."""

    can_focus = False  # the table keeps the keyboard; tabs are for the mouse and for orientation

    def __init__(self, active: str) -> None:
        super().__init__(*(Tab(label, id=mode) for mode, label in SCREENS), active=active)
        self.mode = active

    def on_tabs_tab_activated(self, event: Tabs.TabActivated) -> None:
        event.stop()
        if event.tab.id and event.tab.id != self.mode:
            self.active = self.mode  # this screen's tabs keep pointing at this screen
            self.app.switch_mode(event.tab.id)
