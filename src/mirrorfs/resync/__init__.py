"""The resync method: examine, plan, copy, commit, verify (DESIGN.md; US 6,654,912)."""

from ._examine import Examination as Examination
from ._examine import PlexReport as PlexReport
from ._examine import examine as examine
from ._examine import examine_plexes as examine_plexes
