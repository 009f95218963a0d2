{#- Inside sys-monitor's template (an AppVM's root is discarded at reboot and
    units under /usr/local are not picked up, qubes-issues #6063):
    sudo qubesctl --skip-dom0 --targets=debian-13-xfce state.sls qubes.monitor.template-monitor
    The sysmon package from this formula's packages/, its dependencies from
    Debian's signed repositories (apt, through the updates proxy); no pip,
    no PyPI.  Then the settings from map.jinja / pillar. -#}
{%- from "qubes/monitor/map.jinja" import sysmon with context %}
{%- from "qubes/monitor/package.jinja" import install_package with context %}
{{ install_package('sysmon-package', 'sysmon') }}

sysmon-config:
  file.managed:
    - name: /etc/sysmon/sysmon.toml
    - source: salt://qubes/monitor/files/sysmon.toml.jinja
    - template: jinja
    - mode: '0644'
    - require:
      - sysmon-package
