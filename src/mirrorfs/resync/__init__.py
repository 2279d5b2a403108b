"""The resync method: examine, plan, copy, commit, verify (DESIGN.md; US 6,654,912).

Steps and the claims they implement: ``examine`` (claim 1's examining of CP
values, claim 4's first comparison element), choosing the most up-to-date
plex (claim 1), ``plan_target`` (claim 2, claims 4-5's second comparison
element), ``Resync`` (claims 3 and 6).
"""

from ._copy import Resync as Resync
from ._copy import ResyncFailed as ResyncFailed
from ._copy import TargetResult as TargetResult
from ._copy import Throttle as Throttle
from ._examine import Examination as Examination
from ._examine import PlexReport as PlexReport
from ._examine import examine as examine
from ._examine import examine_plexes as examine_plexes
from ._plan import Plan as Plan
from ._plan import plan_target as plan_target
from ._plan import target_slots as target_slots
from ._rescue import NotEnoughSpace as NotEnoughSpace
from ._rescue import rescue as rescue
from ._run import ResyncJob as ResyncJob
from ._run import ResyncReport as ResyncReport
from ._run import SplitBrain as SplitBrain
from ._run import resync_volume as resync_volume
